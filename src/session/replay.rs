//! The session's side of the outbox: transaction messages enter the durable
//! outbox before anything else happens to them, go to the cloud one at a
//! time in arrival order (directly under the charger's message id when the
//! queue is empty and the link is up, else replayed later under the
//! gateway's own ids), and leave only when the cloud has answered. Local
//! transaction ids are mapped to the cloud's in both directions.

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::Instant;

use super::{End, Session, UpLink};
use crate::event::{self, Event, Source};
use crate::journal::Op;
use crate::ocpp::frame;
use crate::outbox::{self, Entry};

/// What `answer_locally` does with the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queue {
    /// Not a queued message.
    No,
    /// Queue it now (it arrived while the gateway answers alone).
    Push,
    /// It is queued under this key already (sent, but the cloud did not
    /// answer in time): record the local transaction id on it.
    Update(u64),
}

/// The outbox entry that is with the cloud right now.
pub(super) struct InFlight {
    pub msg_id: String,
    pub key: u64,
    pub sent: Instant,
    /// The charger waits for this answer (sent directly under its id).
    pub direct: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Session {
    /// Whether transaction messages go through the outbox (only when there
    /// is a cloud to deliver them to, and only for OCPP 1.6).
    pub(super) fn uses_outbox(&self) -> bool {
        self.ctx.connector.is_some() && self.proto == crate::ocpp::Protocol::Ocpp16
    }

    /// Load what a previous session (or run) left queued for this charger.
    pub(super) fn load_outbox(&mut self) {
        match (
            self.ctx.journal.outbox(&self.id),
            self.ctx.journal.tx_map(&self.id),
        ) {
            (Ok(q), Ok(map)) => {
                self.outbox = q.into();
                for (local, cloud) in map {
                    self.to_cloud.insert(local, cloud);
                    self.to_local.insert(cloud, local);
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                log::error!(charger_id = self.id.as_str(); "cannot load the outbox: {e}")
            }
        }
    }

    /// The outbox operation for a locally answered message.
    pub(super) fn queue_op(
        &self,
        queue: Queue,
        action: &str,
        payload: &RawValue,
        local_tx: Option<i64>,
    ) -> Option<outbox::Op> {
        match queue {
            Queue::No => None,
            Queue::Push => Some(outbox::Op::Push {
                charger: self.id.clone(),
                entry: Entry {
                    action: action.into(),
                    payload: payload.get().into(),
                    queued_ms: now_ms(),
                    attempts: 0,
                    local_tx,
                },
            }),
            Queue::Update(key) => {
                let (_, old) = self.outbox.iter().find(|(k, _)| *k == key)?;
                let entry = Entry {
                    local_tx: local_tx.or(old.local_tx),
                    ..old.clone()
                };
                Some(outbox::Op::Update {
                    charger: self.id.clone(),
                    key,
                    entry,
                })
            }
        }
    }

    /// Mirror a committed outbox operation in memory.
    pub(super) fn queued(&mut self, op: Option<outbox::Op>, key: Option<u64>) {
        match op {
            Some(outbox::Op::Push { entry, .. }) => {
                if let Some(k) = key {
                    self.outbox.push_back((k, entry));
                }
            }
            Some(outbox::Op::Update { key, entry, .. }) => {
                if let Some(slot) = self.outbox.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = entry;
                }
            }
            _ => {}
        }
    }

    /// A transaction message from the charger.
    pub(super) async fn on_transaction_call(
        &mut self,
        id: String,
        action: String,
        payload: Box<RawValue>,
    ) -> Result<(), End> {
        let direct =
            matches!(self.link, UpLink::Up) && self.outbox.is_empty() && !self.upstream_busy();
        if !direct {
            return self
                .answer_locally(&id, &action, &payload, Queue::Push)
                .await;
        }
        // Durable first, then to the cloud under the charger's own id, so the
        // cloud's answer reaches the charger unchanged.
        let entry = Entry {
            action: action.clone(),
            payload: payload.get().into(),
            queued_ms: now_ms(),
            attempts: 0,
            local_tx: None,
        };
        let mut ops = vec![Op::Outbox(outbox::Op::Push {
            charger: self.id.clone(),
            entry: entry.clone(),
        })];
        if event::journal_on_request(&action) {
            if let Some(ev) = event::for_charger_call(&action, &payload, None, Source::Charger) {
                ops.push(Op::Event {
                    charger: Some(self.id.clone()),
                    event: ev,
                });
            }
        }
        let key = match self.ctx.journal.commit(ops).await {
            Ok(keys) => keys[0],
            Err(e) => {
                // Storage is failing (disk full?): the journal raised its
                // alarm. The cloud is there, so relay the message as a plain
                // proxy would rather than refuse it.
                log::error!(charger_id = self.id.as_str(); "cannot queue {action}, relaying it unqueued: {e}");
                let text = frame::call_raw(&id, &action, payload.get());
                if !self.send_upstream(&text).await {
                    self.link_down("write to cloud failed".into(), None).await?;
                    return self.answer_locally(&id, &action, &payload, Queue::No).await;
                }
                self.pending_up.insert(
                    id,
                    super::PendingUp {
                        action,
                        payload,
                        sent: Instant::now(),
                    },
                );
                return Ok(());
            }
        };
        self.outbox.push_back((key, entry));
        self.send_entry(key, Some(id)).await
    }

    /// Queue a message the gateway writes on the charger's behalf.
    pub(super) async fn enqueue(
        &mut self,
        action: String,
        payload: Value,
        event: Event,
        reply: tokio::sync::oneshot::Sender<bool>,
    ) -> Result<(), End> {
        let mut ops = vec![Op::Event {
            charger: Some(self.id.clone()),
            event,
        }];
        let entry = Entry {
            action,
            payload: payload.to_string(),
            queued_ms: now_ms(),
            attempts: 0,
            local_tx: None,
        };
        if self.uses_outbox() {
            ops.push(Op::Outbox(outbox::Op::Push {
                charger: self.id.clone(),
                entry: entry.clone(),
            }));
        }
        match self.ctx.journal.commit(ops).await {
            Ok(keys) => {
                if self.uses_outbox() {
                    self.outbox.push_back((keys[1], entry));
                }
                let _ = reply.send(true);
                self.pump_outbox().await
            }
            Err(e) => {
                log::error!(charger_id = self.id.as_str(); "cannot queue {}: {e}", entry.action);
                let _ = reply.send(false);
                Ok(())
            }
        }
    }

    /// Send one outbox entry to the cloud; `charger_id` when the charger
    /// waits for the answer under that id.
    async fn send_entry(&mut self, key: u64, charger_id: Option<String>) -> Result<(), End> {
        let Some((_, entry)) = self.outbox.iter().find(|(k, _)| *k == key).cloned() else {
            return Ok(());
        };
        let payload = outbox::rewrite_up(&entry.action, &entry.payload, |l| {
            self.to_cloud.get(&l).copied()
        })
        .unwrap_or(entry.payload.clone());
        let payload = self.mark_deauthorized(&entry, payload);
        let direct = charger_id.is_some();
        let msg_id = charger_id.unwrap_or_else(|| format!("cg-r{key}-{}", fastrand::u32(..)));
        let text = frame::call_raw(&msg_id, &entry.action, &payload);
        self.in_flight = Some(super::replay::InFlight {
            msg_id,
            key,
            sent: Instant::now(),
            direct,
        });
        if !self.send_upstream(&text).await {
            return self.link_down("write to cloud failed".into(), None).await;
        }
        Ok(())
    }

    /// The StopTransaction of a transaction the gateway stopped because the
    /// cloud refused its id tag carries reason DeAuthorized.
    fn mark_deauthorized(&self, entry: &Entry, payload: String) -> String {
        if entry.action != "StopTransaction" || self.deauthorized.is_empty() {
            return payload;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&entry.payload) else {
            return payload;
        };
        if !v["transactionId"]
            .as_i64()
            .is_some_and(|t| self.deauthorized.contains(&t))
        {
            return payload;
        }
        let Ok(mut out) = serde_json::from_str::<Value>(&payload) else {
            return payload;
        };
        v["reason"] = "DeAuthorized".into();
        out["reason"] = v["reason"].clone();
        out.to_string()
    }

    /// Send the next queued entry when the cloud link is free.
    pub(super) async fn pump_outbox(&mut self) -> Result<(), End> {
        // Runs after every answer from the cloud; nearly always there is
        // nothing to send, and the sending part is boxed so that its
        // future does not enlarge every session's.
        if self.outbox.is_empty() && self.resync.is_idle() {
            return Ok(());
        }
        Box::pin(self.pump_outbox_now()).await
    }

    async fn pump_outbox_now(&mut self) -> Result<(), End> {
        // A boot the cloud missed goes before the transactions.
        if self.pump_resync(true).await? {
            return Ok(());
        }
        loop {
            let free = matches!(self.link, UpLink::Up) && !self.upstream_busy();
            if !free || self.outbox_retry_at.is_some_and(|t| t > Instant::now()) {
                return Ok(());
            }
            let Some((key, entry)) = self.outbox.front().cloned() else {
                // Outbox delivered: now the latest statuses.
                self.pump_resync(false).await?;
                return Ok(());
            };
            let local = serde_json::from_str::<Value>(&entry.payload)
                .ok()
                .and_then(|v| v["transactionId"].as_i64())
                .filter(|t| *t < 0);
            if entry.action != "StartTransaction"
                && local.is_some_and(|l| !self.to_cloud.contains_key(&l))
            {
                // Its StartTransaction never reached the cloud (dead letter):
                // there is no cloud transaction to send this to.
                self.kill(
                    key,
                    &entry,
                    "its StartTransaction was not accepted by the cloud (no cloud transaction id)"
                        .into(),
                )
                .await;
                continue;
            }
            return self.send_entry(key, None).await;
        }
    }

    /// The cloud answered the entry in flight.
    pub(super) async fn on_outbox_result(
        &mut self,
        text: &str,
        payload: &RawValue,
    ) -> Result<(), End> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        let Some(pos) = self.outbox.iter().position(|(k, _)| *k == f.key) else {
            return Ok(());
        };
        let (key, entry) = self.outbox.remove(pos).expect("position is valid");
        self.outbox_retry_at = None;
        let mut ops = vec![Op::Outbox(outbox::Op::Remove {
            charger: self.id.clone(),
            key,
        })];
        if let Some(op) = crate::auth::cache_update(&entry.action, &entry.payload, payload.get()) {
            ops.push(Op::Auth(op));
        }
        let cloud_tx = serde_json::from_str::<Value>(payload.get())
            .ok()
            .and_then(|v| v["transactionId"].as_i64());
        if let (Some(local), Some(cloud)) = (entry.local_tx, cloud_tx) {
            ops.push(Op::Outbox(outbox::Op::MapTx {
                charger: self.id.clone(),
                local,
                cloud,
            }));
            self.to_cloud.insert(local, cloud);
            self.to_local.insert(cloud, local);
        }
        let raw = RawValue::from_string(entry.payload.clone()).ok();
        let ev = if f.direct {
            raw.as_ref().and_then(|p| {
                if event::journal_on_request(&entry.action) {
                    None
                } else {
                    event::for_charger_call(&entry.action, p, Some(payload), Source::Cloud)
                }
            })
        } else {
            let status = crate::ocpp::messages::AnswerFields::read(payload).status();
            Some(Event::Replayed {
                action: entry.action.clone(),
                queued_ms: entry.queued_ms,
                local_transaction_id: entry.local_tx,
                cloud_transaction_id: cloud_tx,
                status,
            })
        };
        if let Some(ev) = ev {
            ops.push(Op::Event {
                charger: Some(self.id.clone()),
                event: ev,
            });
        }
        // Not awaited: the next entry can go out while this commits (group
        // commit). A crash before the commit means this entry is sent again,
        // the same window as a crash just before the cloud's answer arrived.
        self.ctx.journal.submit(ops).await;
        if f.direct {
            self.send_charger(text.to_string()).await?;
        } else if entry.action == "StartTransaction" {
            let status = crate::ocpp::messages::AnswerFields::read(payload).status();
            if let (Some(local), Some(s)) = (entry.local_tx, status) {
                if s != "Accepted" {
                    self.deauthorize(local, &s).await?;
                }
            }
        }
        self.pump_outbox().await
    }

    /// The cloud did not accept the id tag of a transaction the gateway let
    /// start offline. OCPP 1.6 StopTransactionOnInvalidId: if it is still
    /// running, the gateway stops it, and its StopTransaction goes to the
    /// cloud with reason DeAuthorized.
    async fn deauthorize(&mut self, local: i64, status: &str) -> Result<(), End> {
        if !self.ctx.cfg.stop_on_invalid_id {
            return Ok(());
        }
        let state = self.ctx.journal.state();
        let running = state.chargers.get(&self.id).is_some_and(|c| {
            c.transactions
                .values()
                .any(|t| t.transaction_id == Some(local))
        });
        if !running {
            return Ok(());
        }
        log::warn!(charger_id = self.id.as_str(); "{}: the cloud answered {status} for offline transaction {local}: stopping it", self.id);
        self.deauthorized.insert(local);
        let (reply, _) = tokio::sync::oneshot::channel();
        let payload = serde_json::json!({ "transactionId": local });
        self.queue_down.push_back(super::Queued::Local {
            action: "RemoteStopTransaction".into(),
            payload,
            source: Source::Gateway,
            reply,
        });
        self.pump_down().await
    }

    /// The cloud refused the entry in flight with a CALLERROR.
    pub(super) async fn on_outbox_error(
        &mut self,
        text: &str,
        code: &str,
        description: &str,
    ) -> Result<(), End> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        let Some((key, entry)) = self.outbox.iter().find(|(k, _)| *k == f.key).cloned() else {
            return Ok(());
        };
        let error = format!("{code}: {description}");
        if f.direct {
            // The charger asked; it gets the cloud's answer and owns the retry.
            self.outbox.retain(|(k, _)| *k != key);
            let ops = vec![Op::Outbox(outbox::Op::Remove {
                charger: self.id.clone(),
                key,
            })];
            let _ = self.ctx.journal.commit(ops).await;
            self.send_charger(text.to_string()).await?;
            self.protocol_error(
                crate::event::Link::Cloud,
                code,
                &format!("cloud rejected {}: {description}", entry.action),
                "",
            )
            .await;
            return self.pump_outbox().await;
        }
        let attempts = entry.attempts + 1;
        let cfg = self.ctx.cfg.clone();
        if attempts >= cfg.tx_attempts {
            self.kill(key, &Entry { attempts, ..entry }, error).await;
        } else {
            let updated = Entry {
                attempts,
                ..entry.clone()
            };
            let ops = vec![
                Op::Outbox(outbox::Op::Update {
                    charger: self.id.clone(),
                    key,
                    entry: updated.clone(),
                }),
                Op::Event {
                    charger: Some(self.id.clone()),
                    event: Event::ReplayRetry {
                        action: entry.action.clone(),
                        attempt: attempts,
                        error,
                    },
                },
            ];
            let _ = self.ctx.journal.commit(ops).await;
            self.queued(
                Some(outbox::Op::Update {
                    charger: self.id.clone(),
                    key,
                    entry: updated,
                }),
                Some(key),
            );
            // OCPP 1.6 TransactionMessageRetryInterval: interval × attempts so far.
            self.outbox_retry_at = Some(Instant::now() + cfg.tx_retry_interval * attempts);
        }
        self.pump_outbox().await
    }

    async fn kill(&mut self, key: u64, entry: &Entry, error: String) {
        self.outbox.retain(|(k, _)| *k != key);
        self.outbox_retry_at = None;
        log::warn!(charger_id = self.id.as_str(); "{}: {} moved to dead letters: {error}", self.id, entry.action);
        let ev = Event::DeadLetter {
            action: entry.action.clone(),
            queued_ms: entry.queued_ms,
            error: error.clone(),
        };
        let ops = vec![
            Op::Outbox(outbox::Op::Kill {
                charger: self.id.clone(),
                key,
                entry: entry.clone(),
                error,
            }),
            Op::Event {
                charger: Some(self.id.clone()),
                event: ev,
            },
        ];
        if let Err(e) = self.ctx.journal.commit(ops).await {
            log::error!(charger_id = self.id.as_str(); "cannot move outbox entry {key} to dead letters: {e}");
        }
    }

    /// The entry in flight will get no answer (link down or timeout): if
    /// the charger waits for it, answer it locally; the entry stays queued
    /// and is sent again later.
    pub(super) async fn abandon_in_flight(&mut self) -> Result<(), End> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        if !f.direct {
            return Ok(());
        }
        let Some((_, entry)) = self.outbox.iter().find(|(k, _)| *k == f.key).cloned() else {
            return Ok(());
        };
        let Ok(payload) = RawValue::from_string(entry.payload.clone()) else {
            return Ok(());
        };
        self.answer_locally(&f.msg_id, &entry.action, &payload, Queue::Update(f.key))
            .await
    }

    /// Rewrite the cloud's transaction id to the local one in calls toward
    /// the charger. `None`: relay the original text.
    pub(super) fn rewrite_for_charger(
        &self,
        id: &str,
        action: &str,
        request: &Value,
    ) -> Option<String> {
        if self.to_local.is_empty() {
            return None;
        }
        let payload = outbox::rewrite_down(action, &request.to_string(), |c| {
            self.to_local.get(&c).copied()
        })?;
        Some(frame::call_raw(id, action, &payload))
    }
}
