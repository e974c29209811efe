//! The session's cloud link and housekeeping, as decisions: opening the
//! upstream connection, losing it (answering what the charger still waits
//! for), retries with backoff, call timeouts, pings, and the end of a
//! session.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::inout::{Action, CloudLink, End, PendingUp, Queue, Queued};

use super::state::{SessionState, IDLE_TICK, MAX_LATE, PING_GRACE, TICK};

/// A relayed-only call (OCPP 2.0.1) the cloud has not answered after this
/// many call timeouts is forgotten: its charger stopped waiting long ago.
const LATE_FACTOR: u32 = 10;
use crate::event::{self, Event, Link};
use crate::hub::CallOutcome;
use crate::ocpp::Protocol;
use crate::upstream::ConnectError;

impl<S> SessionState<S> {
    // ---- upstream link ----

    pub(super) fn start_connect(&mut self, first: bool) {
        if self.cloud_url.is_none() {
            return;
        }
        self.out.push(Action::OpenCloud);
        self.link = CloudLink::Connecting { first };
    }

    pub(super) fn on_connected(
        &mut self,
        res: Result<(Box<S>, Protocol), ConnectError>,
    ) -> Result<(), End> {
        let first = matches!(self.link, CloudLink::Connecting { first: true });
        match res {
            Ok((ws, chosen)) if chosen != self.proto => {
                // The charger was given another protocol while the cloud had
                // not answered; it offered this one too, so it is asked to
                // reconnect and is then given what the cloud chose.
                self.out.push(Action::CloseCloud(ws));
                let why = format!(
                    "the cloud chose {} (this connection speaks {}): reconnect to renegotiate",
                    chosen.as_str(),
                    self.proto.as_str()
                );
                log::info!(charger_id = self.id.as_str(); "{}: {why}", self.id);
                Err(End::new(
                    why,
                    Some((CloseCode::Restart, "cloud chose another protocol")),
                ))
            }
            Ok((ws, _)) => {
                self.link = CloudLink::Up(*ws);
                self.last_connect_error = None;
                if let Some(b) = self.backoff.as_mut() {
                    b.reset();
                }
                log::info!(charger_id = self.id.as_str(); "{}: cloud link up", self.id);
                self.journal(Event::Connect {
                    link: Link::Cloud,
                    remote: self.cloud_url.clone(),
                    protocol: Some(self.proto.as_str().into()),
                });
                self.outbox_retry_at = None;
                self.pump_outbox();
                Ok(())
            }
            Err(e) => {
                if self.last_connect_error.as_ref() != Some(&e) {
                    if matches!(e, ConnectError::Certificate { .. }) {
                        // Not a network hiccup: someone has to act.
                        log::error!(charger_id = self.id.as_str(); "{}: ALARM: the cloud's TLS certificate was refused ({e}); check [upstream] ca_file and the cloud's certificate", self.id);
                    } else {
                        log::warn!(charger_id = self.id.as_str(); "{}: cloud connect failed: {e}", self.id);
                    }
                    self.journal(Event::Disconnect {
                        link: Link::Cloud,
                        reason: format!("connect failed: {e}"),
                        code: None,
                    });
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

    /// Offline mode `disconnect` (`[offline] mode`, `mode_ocpp201`: the
    /// default for 2.0.1, as its Part 4 §6.3 asks of a local controller):
    /// without a cloud link the charger is closed, so it queues by itself.
    pub(super) fn disconnect_mode(&self) -> bool {
        self.cfg.offline_mode_for(self.proto) == crate::config::OfflineMode::Disconnect
    }

    /// Whether the gateway answers this charger itself when the cloud is
    /// away or silent (see [`Config::answers_itself`]).
    ///
    /// [`Config::answers_itself`]: crate::config::Config::answers_itself
    pub(super) fn answers_itself(&self) -> bool {
        self.cfg
            .answers_itself(self.proto, self.cloud_url.is_none())
    }

    /// The link is down until the next attempt; returns what it was.
    fn schedule_retry(&mut self) -> CloudLink<S> {
        let delay = self
            .backoff
            .as_mut()
            .map_or(Duration::from_secs(5), |b| b.next_delay());
        let down = CloudLink::Down {
            retry_at: self.now.mono + delay,
        };
        std::mem::replace(&mut self.link, down)
    }

    /// The cloud link went down: answer whatever the charger still waits
    /// for, and retry later. A link that is not up has nothing to lose.
    /// `closed`: the cloud closed the link with a close frame, which is
    /// answered.
    pub(super) fn link_down(
        &mut self,
        reason: String,
        code: Option<u16>,
        closed: bool,
    ) -> Result<(), End> {
        if !self.cloud_up() {
            return Ok(());
        }
        log::warn!(charger_id = self.id.as_str(); "{}: cloud link down: {reason}", self.id);
        self.journal(Event::Disconnect {
            link: Link::Cloud,
            reason: reason.clone(),
            code,
        });
        self.last_connect_error = None;
        if let (CloudLink::Up(up), true) = (self.schedule_retry(), closed) {
            // The cloud closed with a close frame: the socket goes to the
            // task, which sends the close frame back (RFC 6455 §5.5.1)
            // before dropping it.
            self.out.push(Action::CloseCloud(Box::new(up)));
        }
        if self.disconnect_mode() {
            return Err(End::new(
                format!("cloud link down: {reason}"),
                Some((CloseCode::Again, "cloud unreachable")),
            ));
        }
        self.abandon_in_flight();
        self.late_down.clear(); // the next link's cloud never asked
        self.resync.in_flight = None; // sent again when the link returns
        self.answer_pending_locally(|_| true);
        Ok(())
    }

    /// Answer the charger's relayed calls that `which` picks, oldest first.
    fn answer_pending_locally(&mut self, which: impl Fn(&PendingUp) -> bool) {
        let ids: Vec<String> = self
            .pending_up
            .iter()
            .filter(|(_, p)| which(p))
            .map(|(k, _)| k.clone())
            .collect();
        let mut due: Vec<(String, PendingUp)> = ids
            .into_iter()
            .filter_map(|id| self.pending_up.remove(&id).map(|p| (id, p)))
            .collect();
        due.sort_by_key(|(_, p)| p.sent);
        for (id, p) in due {
            self.answer_locally(&id, &p.action, &p.payload, Queue::No);
        }
    }

    // ---- housekeeping ----

    /// When the session next needs [`Input::Timer`](super::state::Input):
    /// the housekeeping tick, or the retry of the cloud link.
    pub fn deadline(&mut self) -> std::time::Instant {
        let want = self.next_tick(self.last_tick);
        if want < self.tick_at {
            self.tick_at = want;
        }
        match self.link {
            CloudLink::Down { retry_at } => retry_at.min(self.tick_at),
            _ => self.tick_at,
        }
    }

    /// When the housekeeping tick is next due. Every second while a call,
    /// an outbox entry or a resync waits on a timeout; otherwise only for
    /// the next ping or the check that pings are answered. An idle charger
    /// then costs one wake-up per ping instead of one a second: with 1,000
    /// idle chargers that was 1,000 wake-ups/s and a few percent of a core
    /// for nothing.
    fn next_tick(&self, last_tick: std::time::Instant) -> std::time::Instant {
        let busy = !self.pending_up.is_empty()
            || !self.pending_down.is_empty()
            || !self.queue_down.is_empty()
            || self.in_flight.is_some()
            || self.resync.in_flight.is_some()
            || !self.resync.is_idle()
            || !self.outbox.is_empty();
        let soonest = last_tick + TICK;
        if busy {
            return soonest;
        }
        let ping = self.cfg.ocpp.ping_interval;
        if ping.is_zero() {
            return last_tick + IDLE_TICK;
        }
        let ping_due = self.last_ping + ping;
        let silent_too_long = self.last_rx + ping * 2 + PING_GRACE;
        // Never sooner than a second after the last tick: the tick's
        // checks are whole-second ones, and a deadline it does not act on
        // must not make the timer fire again at once.
        ping_due.min(silent_too_long).max(soonest)
    }

    pub(super) fn on_timer(&mut self) -> Result<(), End> {
        let now = self.now.mono;
        if let CloudLink::Down { retry_at } = self.link {
            if now >= retry_at {
                self.start_connect(false);
            }
        }
        if now < self.tick_at {
            return Ok(());
        }
        let step = self.on_tick();
        self.last_tick = now;
        self.tick_at = self.next_tick(now);
        step
    }

    fn on_tick(&mut self) -> Result<(), End> {
        let now = self.now.mono;
        // The cloud's answers wait `answer_timeout`; the charger's, below,
        // `call_timeout`.
        let timeout = self.cfg.ocpp.answer_timeout;
        if self.answers_itself() {
            self.answer_pending_locally(|p| now.duration_since(p.sent) >= timeout);
        } else {
            // Relayed only: the charger's call waits for the cloud's answer
            // however late, under the charger's own timeout. One it gave up
            // on long ago is forgotten.
            self.pending_up
                .retain(|_, p| now.duration_since(p.sent) < timeout * LATE_FACTOR);
        }
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| now.duration_since(f.sent) >= timeout)
        {
            // The cloud is silent: try again after the retry interval.
            self.abandon_in_flight();
            self.outbox_retry_at = Some(now + self.cfg.offline.tx_retry_interval);
        }
        if self
            .resync
            .in_flight
            .as_ref()
            .is_some_and(|f| now.duration_since(f.sent) >= timeout)
        {
            self.resync.in_flight = None;
        }
        self.pump_outbox();
        let timeout = self.cfg.ocpp.call_timeout;
        let expired: Vec<String> = self
            .pending_down
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for id in expired {
            if let Some(p) = self.pending_down.remove(&id) {
                self.journal_remote_action(&p, &CallOutcome::Timeout);
                match p.reply {
                    Some(reply) => self.out.push(Action::Reply(reply, CallOutcome::Timeout)),
                    None => {
                        if self.late_down.len() >= MAX_LATE {
                            self.late_down.pop_front();
                        }
                        self.late_down.push_back((id, p));
                    }
                }
            }
        }
        self.pump_down();
        let interval = self.cfg.ocpp.ping_interval;
        if !interval.is_zero() {
            if now.duration_since(self.last_rx) > interval * 2 + PING_GRACE {
                return Err(End::silent("no answer to pings", CloseCode::Away));
            }
            if now.duration_since(self.last_ping) >= interval {
                self.last_ping = now;
                self.out.push(Action::Ping);
            }
        }
        Ok(())
    }

    /// Journal a broken frame: the first of each code, and then one a
    /// minute with the count of those in between, so that a charger
    /// sending garbage cannot fill the journal or the log.
    pub(super) fn protocol_error(&mut self, from: Link, code: &str, detail: &str, text: &str) {
        let key = (from == Link::Cloud, code.to_string());
        let Some(repeated) = self.noise.report(key, self.now.mono) else {
            return;
        };
        log::warn!(charger_id = self.id.as_str(); "{}: protocol error from {from:?}: {code}: {detail}", self.id);
        self.journal(Event::ProtocolError {
            from,
            code: code.to_string(),
            detail: detail.to_string(),
            frame: event::excerpt(text, 200),
            repeated: (repeated > 0).then_some(repeated),
        });
    }

    /// The session ends: close both sockets, journal the disconnect, and
    /// tell everyone who waits for the charger that it is gone.
    pub(super) fn finish(&mut self, end: End) {
        log::info!(charger_id = self.id.as_str(); "{}: charger disconnected: {}", self.id, end.reason);
        // Broken frames counted since their last record: said now, so
        // that every one is accounted for.
        let mut counted = self.noise.drain();
        counted.sort();
        for ((from_cloud, code), n) in counted {
            // This record and the `repeated` before it: the n counted.
            self.journal(Event::ProtocolError {
                from: if from_cloud { Link::Cloud } else { Link::Charger },
                code,
                detail: "the same again, counted and not journaled one by one, until the connection ended".into(),
                frame: String::new(),
                repeated: (n > 1).then_some(n - 1),
            });
        }
        // History like any other: the gateway vouches for nothing here
        // (and a clean stop writes it before the journal closes). Journaled
        // first: the close handshake may take a moment.
        self.journal(Event::Disconnect {
            link: Link::Charger,
            reason: end.reason,
            code: end.code,
        });
        if let Some((code, why)) = end.close {
            self.out
                .push(Action::CloseCharger(code, why, end.handshake));
        }
        if let CloudLink::Up(up) = std::mem::replace(&mut self.link, CloudLink::Standalone) {
            self.out.push(Action::CloseCloud(Box::new(up)));
            self.journal(Event::Disconnect {
                link: Link::Cloud,
                reason: "charger disconnected".into(),
                code: Some(1000),
            });
        }
        for (_, p) in self.pending_down.drain() {
            if let Some(reply) = p.reply {
                self.out
                    .push(Action::Reply(reply, CallOutcome::Disconnected));
            }
        }
        for q in self.queue_down.drain(..) {
            if let Queued::Local { reply, .. } = q {
                self.out
                    .push(Action::Reply(reply, CallOutcome::Disconnected));
            }
        }
        self.out.push(Action::Stop);
    }
}
