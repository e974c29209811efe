//! Bringing the cloud up to date after an outage. BootNotification and
//! StatusNotification are not queued message by message: the cloud gets a
//! BootNotification if the charger booted while the gateway answered it,
//! before anything else, and, after the outbox, the latest status of each
//! connector that changed meanwhile. Sent under the gateway's own ids;
//! the answers are consumed here.

use serde_json::Value;

use super::inout::ResyncInFlight;
use super::state::SessionState;
use crate::event::Event;
use crate::ocpp::{frame, Action};

/// The connector a StatusNotification is about: 1.6's `connectorId`, or
/// 2.0.1's EVSE and connector together (one key per pair).
fn connector(payload: &str) -> Option<u64> {
    let v = serde_json::from_str::<Value>(payload).ok()?;
    let c = v.get("connectorId")?.as_u64()?;
    Some(match v.get("evseId").and_then(Value::as_u64) {
        Some(evse) => (evse << 16) | c,
        None => c,
    })
}

impl<S> SessionState<S> {
    /// The gateway answered `action` itself: remember what the cloud missed.
    pub(super) fn note_missed(&mut self, action: &Action, payload: &str) {
        if !self.uses_outbox() {
            return;
        }
        match action {
            Action::BootNotification => {
                // A reboot: statuses from before it are stale.
                self.resync.boot = Some(payload.to_string());
                self.resync.statuses.clear();
            }
            Action::StatusNotification => {
                if let Some(c) = connector(payload) {
                    self.resync.statuses.insert(c, payload.to_string());
                }
            }
            _ => {}
        }
    }

    /// The charger's own message reached the cloud: nothing older to resend.
    pub(super) fn note_delivered(&mut self, action: &Action, payload: &str) {
        match action {
            Action::BootNotification => {
                self.resync.boot = None;
                self.resync.statuses.clear();
            }
            Action::StatusNotification => {
                if let Some(c) = connector(payload) {
                    self.resync.statuses.remove(&c);
                }
            }
            _ => {}
        }
    }

    /// Send the next resync message if its turn has come: a missed boot
    /// goes before the outbox (`before_outbox`), statuses after it.
    /// Returns whether one went out.
    pub(super) fn pump_resync(&mut self, before_outbox: bool) -> bool {
        if !self.cloud_up() || self.upstream_busy() {
            return false;
        }
        let next = match (&self.resync.boot, before_outbox) {
            (Some(p), _) => Some(("BootNotification", p.clone(), None)),
            (None, true) => None,
            (None, false) => self
                .resync
                .statuses
                .iter()
                .next()
                .map(|(c, p)| ("StatusNotification", p.clone(), Some(*c))),
        };
        let Some((action, payload, connector)) = next else {
            return false;
        };
        let msg_id = format!("cg-s{}", fastrand::u32(..));
        let text = frame::call_raw(&msg_id, action, &payload);
        self.resync.in_flight = Some(ResyncInFlight {
            msg_id,
            action,
            connector,
            sent: self.now.mono,
        });
        self.send_cloud(text);
        true
    }

    /// The cloud answered (or refused) the resync message in flight.
    pub(super) fn on_resync_answer(&mut self, status: Option<String>, error: Option<String>) {
        let Some(f) = self.resync.in_flight.take() else {
            return;
        };
        match f.connector {
            None => self.resync.boot = None,
            Some(c) => {
                self.resync.statuses.remove(&c);
            }
        }
        self.journal(Event::Replayed {
            action: f.action.to_string(),
            queued_ms: 0,
            local_transaction_id: None,
            cloud_transaction_id: None,
            status: status.or(error),
        });
        self.pump_outbox()
    }

    /// Whether the upstream CALL slot is taken (OCPP-J: one at a time).
    pub(super) fn upstream_busy(&self) -> bool {
        self.in_flight.is_some() || self.resync.in_flight.is_some() || !self.pending_up.is_empty()
    }
}
