//! The session's cloud link and housekeeping: opening the upstream
//! connection, losing it (answering what the charger still waits for),
//! retries with backoff, call timeouts, pings, and the clean end of a
//! session.

use super::*;

impl Session {
    // ---- upstream link ----

    pub(super) fn start_connect(&mut self, first: bool) {
        let Some(connector) = self.ctx.connector.clone() else {
            return;
        };
        let (id, proto, auth) = (self.id.clone(), self.proto, self.authorization.clone());
        self.connecting = Some(tokio::spawn(async move {
            connector.connect(&id, proto, auth.as_deref()).await
        }));
        self.link = UpLink::Connecting { first };
    }

    pub(super) async fn on_connected(&mut self, res: Result<UpStream, String>) -> Result<(), End> {
        let first = matches!(self.link, UpLink::Connecting { first: true });
        match res {
            Ok(ws) => {
                self.upstream = Some(ws);
                self.link = UpLink::Up;
                self.last_connect_error = None;
                if let Some(b) = self.backoff.as_mut() {
                    b.reset();
                }
                let url = self.ctx.connector.as_ref().map(|c| c.url_for(&self.id));
                log::info!(charger_id = self.id.as_str(); "{}: cloud link up", self.id);
                self.journal(Event::Connect {
                    link: Link::Cloud,
                    remote: url,
                    protocol: Some(self.proto.as_str().into()),
                })
                .await;
                self.outbox_retry_at = None;
                self.pump_outbox().await
            }
            Err(e) => {
                if self.last_connect_error.as_ref() != Some(&e) {
                    if e.starts_with("CERTIFICATE:") {
                        // Not a network hiccup: someone has to act.
                        log::error!(charger_id = self.id.as_str(); "{}: ALARM: the cloud's TLS certificate was refused ({e}); check [upstream] ca_file and the cloud's certificate", self.id);
                    } else {
                        log::warn!(charger_id = self.id.as_str(); "{}: cloud connect failed: {e}", self.id);
                    }
                    self.journal(Event::Disconnect {
                        link: Link::Cloud,
                        reason: format!("connect failed: {e}"),
                        code: None,
                    })
                    .await;
                    self.last_connect_error = Some(e);
                }
                self.schedule_retry();
                if first && self.disconnect_mode() {
                    return Err(End::new(
                        "cloud unreachable",
                        Some((CloseCode::Again, "cloud unreachable")),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Offline mode `disconnect` (always for OCPP 2.0.1, as its Part 4 §6.3
    /// requires of a local controller): without a cloud link the charger is
    /// closed, so it queues by itself.
    pub(super) fn disconnect_mode(&self) -> bool {
        self.proto == Protocol::Ocpp201
            || self.ctx.cfg.offline_mode == crate::config::OfflineMode::Disconnect
    }

    pub(super) fn schedule_retry(&mut self) {
        let delay = self
            .backoff
            .as_mut()
            .map_or(Duration::from_secs(5), |b| b.next_delay());
        self.link = UpLink::Down {
            retry_at: Instant::now() + delay,
        };
    }

    /// The cloud link went down: answer whatever the charger still waits
    /// for, and retry later.
    pub(super) async fn link_down(&mut self, reason: String, code: Option<u16>) -> Result<(), End> {
        // Called from many places on the relay path, so boxed: inline, its
        // future would be part of every session's size.
        Box::pin(self.link_down_now(reason, code)).await
    }

    async fn link_down_now(&mut self, reason: String, code: Option<u16>) -> Result<(), End> {
        self.upstream = None;
        log::warn!(charger_id = self.id.as_str(); "{}: cloud link down: {reason}", self.id);
        self.journal(Event::Disconnect {
            link: Link::Cloud,
            reason: reason.clone(),
            code,
        })
        .await;
        self.last_connect_error = None;
        self.schedule_retry();
        if self.disconnect_mode() {
            return Err(End::new(
                format!("cloud link down: {reason}"),
                Some((CloseCode::Again, "cloud unreachable")),
            ));
        }
        self.abandon_in_flight().await?;
        self.resync.in_flight = None; // sent again when the link returns
        self.answer_pending_locally(|_| true).await
    }

    pub(super) async fn answer_pending_locally(
        &mut self,
        which: impl Fn(&PendingUp) -> bool,
    ) -> Result<(), End> {
        let mut due: Vec<(String, PendingUp)> = Vec::new();
        let ids: Vec<String> = self
            .pending_up
            .iter()
            .filter(|(_, p)| which(p))
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            if let Some(p) = self.pending_up.remove(&id) {
                due.push((id, p));
            }
        }
        due.sort_by_key(|(_, p)| p.sent);
        for (id, p) in due {
            self.answer_locally(&id, &p.action, &p.payload, Queue::No)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn send_upstream(&mut self, text: &str) -> bool {
        self.relay_upstream(text.into()).await
    }

    /// Send a text frame to the cloud; a relayed frame goes as the shared
    /// buffer it was received in.
    pub(super) async fn relay_upstream(&mut self, text: Utf8Bytes) -> bool {
        match self.upstream.as_mut() {
            Some(up) => up.send(Message::Text(text)).await.is_ok(),
            None => false,
        }
    }

    // ---- housekeeping ----

    pub(super) async fn on_tick(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let timeout = self.ctx.cfg.call_timeout;
        self.answer_pending_locally(|p| now.duration_since(p.sent) >= timeout)
            .await?;
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| now.duration_since(f.sent) >= timeout)
        {
            // The cloud is silent: try again after the retry interval.
            self.abandon_in_flight().await?;
            self.outbox_retry_at = Some(now + self.ctx.cfg.tx_retry_interval);
        }
        if self
            .resync
            .in_flight
            .as_ref()
            .is_some_and(|f| now.duration_since(f.3) >= timeout)
        {
            self.resync.in_flight = None;
        }
        self.pump_outbox().await?;
        let expired: Vec<String> = self
            .pending_down
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for id in expired {
            if let Some(p) = self.pending_down.remove(&id) {
                self.journal_remote_action(&p, &CallOutcome::Timeout).await;
                if let Some(reply) = p.reply {
                    let _ = reply.send(CallOutcome::Timeout);
                }
            }
        }
        self.pump_down().await?;
        let interval = self.ctx.cfg.ping_interval;
        if !interval.is_zero() {
            if now.duration_since(self.last_rx) > interval * 2 + super::PING_GRACE {
                return Err(End::new(
                    "no answer to pings",
                    Some((CloseCode::Away, "no answer to pings")),
                ));
            }
            if now.duration_since(self.last_ping) >= interval {
                self.last_ping = now;
                self.charger
                    .send(Message::Ping(Default::default()))
                    .await
                    .map_err(|e| End::new(format!("ping failed: {e}"), None))?;
                if let Some(up) = self.upstream.as_mut() {
                    let _ = up.send(Message::Ping(Default::default())).await;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn protocol_error(&self, from: Link, code: &str, detail: &str, text: &str) {
        log::warn!(charger_id = self.id.as_str(); "{}: protocol error from {from:?}: {code}: {detail}", self.id);
        let ev = Event::ProtocolError {
            from,
            code: code.to_string(),
            detail: detail.to_string(),
            frame: event::excerpt(text, 200),
        };
        self.journal(ev).await;
    }

    pub(super) async fn finish(&mut self, end: End) {
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        log::info!(charger_id = self.id.as_str(); "{}: charger disconnected: {}", self.id, end.reason);
        if let Some((code, why)) = end.close {
            let frame = CloseFrame {
                code,
                reason: why.into(),
            };
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.charger.close(Some(frame))).await;
        }
        let ev = Event::Disconnect {
            link: Link::Charger,
            reason: end.reason,
            code: end.code,
        };
        if let Err(e) = self.ctx.journal.record_durable(Some(&self.id), ev).await {
            log::error!(charger_id = self.id.as_str(); "cannot journal disconnect: {e}");
        }
        if let Some(mut up) = self.upstream.take() {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "charger disconnected".into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), up.close(Some(frame))).await;
            self.journal(Event::Disconnect {
                link: Link::Cloud,
                reason: "charger disconnected".into(),
                code: Some(1000),
            })
            .await;
        }
        for (_, p) in self.pending_down.drain() {
            if let Some(reply) = p.reply {
                let _ = reply.send(CallOutcome::Disconnected);
            }
        }
        for q in self.queue_down.drain(..) {
            if let Queued::Local { reply, .. } = q {
                let _ = reply.send(CallOutcome::Disconnected);
            }
        }
    }
}
