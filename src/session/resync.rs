//! Bringing the cloud up to date after an outage. BootNotification and
//! StatusNotification are not queued message by message: the cloud gets a
//! BootNotification if the charger booted while the gateway answered it,
//! before anything else, and, after the outbox, the latest status of each
//! connector that changed meanwhile. Sent under the gateway's own ids;
//! the answers are consumed here.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::time::Instant;

use super::{End, Session, UpLink};
use crate::event::Event;
use crate::ocpp::frame;

/// What the cloud missed while the gateway answered alone.
#[derive(Debug, Default)]
pub(super) struct Resync {
    /// The payload of a BootNotification the gateway answered itself.
    boot: Option<String>,
    /// The latest StatusNotification payload per connector.
    statuses: BTreeMap<u64, String>,
    /// The resync message with the cloud now: (message id, action, connector).
    pub in_flight: Option<(String, String, Option<u64>, Instant)>,
}

impl Resync {
    /// Nothing for the cloud to catch up on.
    pub(super) fn is_idle(&self) -> bool {
        self.boot.is_none() && self.statuses.is_empty()
    }
}

fn connector(payload: &str) -> Option<u64> {
    serde_json::from_str::<Value>(payload)
        .ok()?
        .get("connectorId")?
        .as_u64()
}

impl Session {
    /// The gateway answered `action` itself: remember what the cloud missed.
    pub(super) fn note_missed(&mut self, action: &str, payload: &str) {
        if !self.uses_outbox() {
            return;
        }
        match action {
            "BootNotification" => {
                // A reboot: statuses from before it are stale.
                self.resync.boot = Some(payload.to_string());
                self.resync.statuses.clear();
            }
            "StatusNotification" => {
                if let Some(c) = connector(payload) {
                    self.resync.statuses.insert(c, payload.to_string());
                }
            }
            _ => {}
        }
    }

    /// The charger's own message reached the cloud: nothing older to resend.
    pub(super) fn note_delivered(&mut self, action: &str, payload: &str) {
        match action {
            "BootNotification" => {
                self.resync.boot = None;
                self.resync.statuses.clear();
            }
            "StatusNotification" => {
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
    pub(super) async fn pump_resync(&mut self, before_outbox: bool) -> Result<bool, End> {
        if !matches!(self.link, UpLink::Up) || self.upstream_busy() {
            return Ok(false);
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
        let Some((action, payload, conn)) = next else {
            return Ok(false);
        };
        let id = format!("cg-s{}", fastrand::u32(..));
        let text = frame::call_raw(&id, action, &payload);
        self.resync.in_flight = Some((id, action.to_string(), conn, Instant::now()));
        if !self.send_upstream(&text).await {
            self.link_down("write to cloud failed".into(), None).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// The cloud answered (or refused) the resync message in flight.
    pub(super) async fn on_resync_answer(
        &mut self,
        status: Option<String>,
        error: Option<String>,
    ) -> Result<(), End> {
        let Some((_, action, conn, _)) = self.resync.in_flight.take() else {
            return Ok(());
        };
        match conn {
            None => self.resync.boot = None,
            Some(c) => {
                self.resync.statuses.remove(&c);
            }
        }
        let status = status.or(error);
        let ev = Event::Replayed {
            action,
            queued_ms: 0,
            local_transaction_id: None,
            cloud_transaction_id: None,
            status,
        };
        self.journal(ev).await;
        self.pump_outbox().await
    }

    /// Whether the upstream CALL slot is taken (OCPP-J: one at a time).
    pub(super) fn upstream_busy(&self) -> bool {
        self.in_flight.is_some() || self.resync.in_flight.is_some() || !self.pending_up.is_empty()
    }
}
