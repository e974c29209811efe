//! Live state of every charger: a fold of the journal. Applying the same
//! records in the same order always gives the same state, which is how the
//! state is rebuilt on start. Pure: no IO.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::Record;
use crate::event::{Event, Link};

/// One link's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkState {
    pub up: bool,
    /// Milliseconds since the Unix epoch of the last change.
    pub since_ms: Option<i64>,
    /// Why it went down, when it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The OCPP version spoken on it (`ocpp1.6`, `ocpp2.0.1`), once up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Where it came from (`ws://` or `wss://` and the address), once up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

/// What the charger told us at boot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BootInfo {
    pub vendor: String,
    pub model: String,
    pub firmware: Option<String>,
    pub serial: Option<String>,
    pub time_ms: i64,
}

/// One connector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectorState {
    pub status: String,
    pub error_code: String,
    pub since_ms: i64,
}

/// A running transaction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Transaction {
    pub connector: u32,
    pub transaction_id: Option<i64>,
    /// OCPP 2.0.1's transaction id (a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_ref: Option<String>,
    pub id_tag: String,
    pub meter_start: i64,
    pub started: String,
}

impl ChargerState {
    /// Whether its charger link came up over TLS (wss://).
    pub fn charger_link_tls(&self) -> bool {
        self.charger_link
            .remote
            .as_deref()
            .is_some_and(|r| r.starts_with("wss://"))
    }

    /// Whether the charger spoke OCPP 2.0.1 when last connected.
    pub fn speaks_201(&self) -> bool {
        self.charger_link.protocol.as_deref() == Some("ocpp2.0.1")
    }
}

impl ChargerState {
    /// Whether any of its links is up.
    fn links_up(&self) -> bool {
        self.charger_link.up || self.cloud_link.up || self.mirrors.values().any(|l| l.up)
    }

    /// What must outlive a restart, without what changes with every
    /// reading (meter, last event, error count): the journal stores a
    /// charger's state again only when this part changed.
    pub fn durable_part(&self) -> ChargerState {
        ChargerState {
            meter: Meter::default(),
            last_event_ms: None,
            last_event: None,
            protocol_errors: 0,
            ..self.clone()
        }
    }
}

impl Transaction {
    /// The transaction's id as a person reads it: 1.6's number or 2.0.1's
    /// string ("?" before the cloud gave one).
    pub fn name(&self) -> String {
        match (&self.transaction_id, &self.transaction_ref) {
            (Some(i), _) => i.to_string(),
            (None, Some(r)) => r.clone(),
            (None, None) => "?".into(),
        }
    }
}

/// Last meter reading.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Meter {
    pub energy_wh: Option<f64>,
    pub power_w: Option<f64>,
    pub current_a: Option<f64>,
    pub time_ms: Option<i64>,
    /// How far the charger's clock was ahead of the gateway's at its
    /// last measured reading (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_s: Option<i64>,
}

/// Everything the gateway shows about one charger.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChargerState {
    pub id: String,
    pub charger_link: LinkState,
    pub cloud_link: LinkState,
    /// Time of the last journaled event about this charger.
    pub last_event_ms: Option<i64>,
    pub last_event: Option<String>,
    pub boot: Option<BootInfo>,
    pub connectors: BTreeMap<u32, ConnectorState>,
    /// Running transactions by connector.
    pub transactions: BTreeMap<u32, Transaction>,
    pub meter: Meter,
    pub protocol_errors: u64,
    /// The gateway's current limit (smart charging), when it sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,
    /// A pause or cap by staff, in force until resumed or `until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_: Option<Override>,
    /// The cap staff set, kept through a pause (a resume returns to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<Override>,
    /// How the charger answered the gateway's last charging profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_answer: Option<String>,
    /// Its links to the second backends, by mirror name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirrors: BTreeMap<String, LinkState>,
}

/// The gateway's limit for a charger and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limit {
    pub amps: f64,
    pub reason: String,
    pub since_ms: i64,
}

/// A pause (`limit_a` 0) or cap by staff.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Override {
    pub limit_a: f64,
    /// RFC 3339.
    pub until: Option<String>,
    pub by: String,
    /// A pause (over whatever cap is set), not a cap.
    #[serde(default)]
    pub pause: bool,
}

/// Connector ids the live state keeps (0 is the charger itself). A charger
/// that reports others (a broken or hostile one) is still journaled, but
/// cannot grow the gateway's memory without bound.
pub const MAX_CONNECTOR_ID: u32 = 64;

/// The longest text the live state keeps from a charger (OCPP 1.6's
/// longest identifier strings are CiString50): a charger sending more
/// cannot grow the state, which is kept in memory and stored.
pub const MAX_TEXT: usize = 50;

fn bounded(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

/// All chargers' state, plus the last sequence number folded in. Each
/// charger's state is shared (`Arc`): a reader's snapshot copies the map,
/// not every charger, and a change copies only that charger's state if
/// a reader still holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveState {
    pub chargers: BTreeMap<String, Arc<ChargerState>>,
    pub last_seq: u64,
}

impl LiveState {
    /// Fold one committed record into the state.
    pub fn apply(&mut self, rec: &Record) {
        self.last_seq = rec.seq;
        if let Event::GatewayStarted { .. } = rec.event {
            return self.all_links_down(rec.time_ms);
        }
        let Some(id) = &rec.charger else { return };
        let c = Arc::make_mut(self.chargers.entry(id.clone()).or_insert_with(|| {
            Arc::new(ChargerState {
                id: id.clone(),
                ..Default::default()
            })
        }));
        c.last_event_ms = Some(rec.time_ms);
        c.last_event = Some(rec.event.kind().to_string());
        c.fold(&rec.event, rec.time_ms);
    }

    /// The gateway restarted: nothing survives a restart, every link
    /// starts down.
    fn all_links_down(&mut self, time_ms: i64) {
        for c in self.chargers.values_mut() {
            if !c.links_up() {
                continue;
            }
            let c = Arc::make_mut(c);
            for l in [&mut c.charger_link, &mut c.cloud_link]
                .into_iter()
                .chain(c.mirrors.values_mut())
            {
                if l.up {
                    *l = LinkState {
                        up: false,
                        since_ms: Some(time_ms),
                        reason: Some("gateway restarted".into()),
                        protocol: l.protocol.take(),
                        remote: None,
                    };
                }
            }
        }
    }
}

impl ChargerState {
    /// Fold one of this charger's events (at `t`) into its state.
    fn fold(&mut self, ev: &Event, t: i64) {
        let c = self;
        match ev {
            Event::Connect { .. }
            | Event::MirrorConnect { .. }
            | Event::MirrorDisconnect { .. }
            | Event::Disconnect { .. } => c.fold_link(ev, t),
            Event::StatusNotification { .. }
            | Event::StartTransaction { .. }
            | Event::StopTransaction { .. } => c.fold_connector(ev, t),
            Event::BootNotification {
                vendor,
                model,
                firmware,
                serial,
                ..
            } => {
                c.boot = Some(BootInfo {
                    vendor: bounded(vendor),
                    model: bounded(model),
                    firmware: firmware.as_deref().map(bounded),
                    serial: serial.as_deref().map(bounded),
                    time_ms: t,
                });
            }
            Event::MeterValues {
                energy_wh,
                power_w,
                current_a,
                clock_skew_s,
                ..
            } => {
                let m = &mut c.meter;
                m.energy_wh = energy_wh.or(m.energy_wh);
                m.power_w = power_w.or(m.power_w);
                m.current_a = current_a.or(m.current_a);
                m.time_ms = Some(t);
                if clock_skew_s.is_some() {
                    m.clock_skew_s = *clock_skew_s;
                }
            }
            Event::ProtocolError { .. } => c.protocol_errors += 1,
            Event::LimitChanged { limit_a, reason } => {
                c.limit = Some(Limit {
                    amps: *limit_a,
                    reason: reason.clone(),
                    since_ms: t,
                });
            }
            Event::Override {
                mode,
                limit_a,
                until,
                source,
            } => c.fold_override(mode, *limit_a, until, &source.to_string()),
            Event::RemoteAction {
                action,
                source: crate::event::Source::Smart,
                result,
                error,
                ..
            } if action == "SetChargingProfile" => {
                c.profile_answer = Some(match (result, error) {
                    (_, Some(e)) => e.clone(),
                    (Some(r), None) => r
                        .get("status")
                        .and_then(|s| s.as_str())
                        .unwrap_or("?")
                        .to_string(),
                    (None, None) => "?".into(),
                });
            }
            _ => {}
        }
    }

    /// A pause, a cap or a resume from staff or a schedule.
    fn fold_override(
        &mut self,
        mode: &str,
        limit_a: Option<f64>,
        until: &Option<String>,
        by: &str,
    ) {
        let c = self;
        let o = Override {
            limit_a: if mode == "pause" {
                0.0
            } else {
                limit_a.unwrap_or(0.0)
            },
            until: until.clone(),
            by: by.to_string(),
            pause: mode == "pause",
        };
        match mode {
            // Out of a pause, back to the cap; out of a cap, free.
            "resume" if c.override_.as_ref().is_some_and(|o| o.pause) => {
                c.override_ = c.cap.clone();
            }
            "resume" => {
                c.override_ = None;
                c.cap = None;
            }
            "pause" => c.override_ = Some(o),
            _ => {
                c.cap = Some(o.clone());
                if !c.override_.as_ref().is_some_and(|p| p.pause) {
                    c.override_ = Some(o);
                }
            }
        }
    }

    /// The links: the charger's, the cloud's, each mirror's.
    fn fold_link(&mut self, ev: &Event, t: i64) {
        let c = self;
        match ev {
            Event::Connect {
                link,
                protocol,
                remote,
            } => {
                *link_of(c, *link) = LinkState {
                    up: true,
                    since_ms: Some(t),
                    reason: None,
                    protocol: protocol.clone(),
                    remote: remote.clone(),
                };
            }
            Event::MirrorConnect {
                mirror, protocol, ..
            } => {
                c.mirrors.insert(
                    mirror.clone(),
                    LinkState {
                        up: true,
                        since_ms: Some(t),
                        reason: None,
                        protocol: Some(protocol.clone()),
                        remote: None,
                    },
                );
            }
            Event::MirrorDisconnect { mirror, reason } => {
                let l = c.mirrors.entry(mirror.clone()).or_default();
                if l.up || l.since_ms.is_none() {
                    l.since_ms = Some(t);
                }
                l.up = false;
                l.reason = Some(reason.clone());
            }
            Event::Disconnect { link, reason, .. } => {
                let l = link_of(c, *link);
                if l.up || l.since_ms.is_none() {
                    *l = LinkState {
                        up: false,
                        since_ms: Some(t),
                        reason: Some(reason.clone()),
                        protocol: l.protocol.take(),
                        remote: None,
                    };
                } else {
                    // A failed reconnect attempt: keep "down since" as it was.
                    l.reason = Some(reason.clone());
                }
            }
            _ => {}
        }
    }

    /// Connector statuses and running transactions.
    fn fold_connector(&mut self, ev: &Event, t: i64) {
        let c = self;
        match ev {
            Event::StatusNotification { connector, .. }
            | Event::StartTransaction { connector, .. }
                if *connector > MAX_CONNECTOR_ID => {}
            Event::StatusNotification {
                connector,
                status,
                error_code,
                ..
            } => {
                let changed = c
                    .connectors
                    .get(connector)
                    .is_none_or(|s| s.status != *status);
                let since_ms = if changed {
                    t
                } else {
                    c.connectors[connector].since_ms
                };
                c.connectors.insert(
                    *connector,
                    ConnectorState {
                        status: bounded(status),
                        error_code: bounded(error_code),
                        since_ms,
                    },
                );
            }
            Event::StartTransaction {
                connector,
                id_tag,
                meter_start,
                transaction_id,
                transaction_ref,
                timestamp,
                ..
            } => {
                c.transactions.insert(
                    *connector,
                    Transaction {
                        connector: *connector,
                        transaction_id: *transaction_id,
                        transaction_ref: transaction_ref.clone(),
                        id_tag: id_tag.clone(),
                        meter_start: *meter_start,
                        started: timestamp.clone(),
                    },
                );
            }
            Event::StopTransaction {
                transaction_id,
                transaction_ref,
                ..
            } => {
                c.transactions.retain(|_, tx| match transaction_id {
                    Some(id) => tx.transaction_id != Some(*id),
                    None => transaction_ref.is_none() || tx.transaction_ref != *transaction_ref,
                });
            }
            _ => {}
        }
    }
}

fn link_of(c: &mut ChargerState, link: Link) -> &mut LinkState {
    match link {
        Link::Charger => &mut c.charger_link,
        Link::Cloud => &mut c.cloud_link,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_keeps_the_cap_under_it_and_a_resume_returns_to_it() {
        let mut s = LiveState::default();
        let ov = |mode: &str, limit: Option<f64>| Event::Override {
            mode: mode.into(),
            limit_a: limit,
            until: None,
            source: Source::Mqtt,
        };
        let mut seq = 0;
        let mut apply = |s: &mut LiveState, e: Event| {
            seq += 1;
            s.apply(&rec(seq, Some("CP1"), e));
        };
        apply(&mut s, ov("cap", Some(16.0)));
        apply(&mut s, ov("pause", None));
        let c = &s.chargers["CP1"];
        assert_eq!(
            c.override_.as_ref().map(|o| (o.limit_a, o.pause)),
            Some((0.0, true))
        );
        assert_eq!(
            c.cap.as_ref().map(|o| o.limit_a),
            Some(16.0),
            "the cap is kept"
        );
        apply(&mut s, ov("resume", None));
        let c = &s.chargers["CP1"];
        assert_eq!(
            c.override_.as_ref().map(|o| (o.limit_a, o.pause)),
            Some((16.0, false)),
            "back to the cap"
        );
        apply(&mut s, ov("resume", None));
        assert!(s.chargers["CP1"].override_.is_none() && s.chargers["CP1"].cap.is_none());
        // A cap of 0 is a cap of 0 (Home Assistant's number shows 0).
        apply(&mut s, ov("cap", Some(0.0)));
        assert_eq!(s.chargers["CP1"].cap.as_ref().map(|o| o.limit_a), Some(0.0));
    }
    use crate::event::Source;

    fn rec(seq: u64, charger: Option<&str>, event: Event) -> Record {
        Record {
            seq,
            time_ms: seq as i64 * 1000,
            charger: charger.map(str::to_string),
            event,
        }
    }

    #[test]
    fn a_session_folds_into_state() {
        let mut s = LiveState::default();
        let evs = vec![
            Event::Connect {
                link: Link::Charger,
                remote: None,
                protocol: Some("ocpp1.6".into()),
            },
            Event::Connect {
                link: Link::Cloud,
                remote: None,
                protocol: None,
            },
            Event::StatusNotification {
                connector: 1,
                status: "Charging".into(),
                error_code: "NoError".into(),
                info: None,
            },
            Event::StartTransaction {
                connector: 1,
                id_tag: "T".into(),
                meter_start: 5,
                transaction_id: Some(9),
                transaction_ref: None,
                status: Some("Accepted".into()),
                timestamp: "x".into(),
                answered_by: Source::Cloud,
            },
            Event::MeterValues {
                connector: 1,
                transaction_id: Some(9),
                transaction_ref: None,
                energy_wh: Some(100.0),
                power_w: None,
                current_a: None,
                clock_skew_s: Some(-1),
            },
        ];
        for (i, e) in evs.into_iter().enumerate() {
            s.apply(&rec(i as u64 + 1, Some("CP1"), e));
        }
        let c = &s.chargers["CP1"];
        assert!(c.charger_link.up && c.cloud_link.up);
        assert_eq!(c.connectors[&1].status, "Charging");
        assert_eq!(c.transactions[&1].transaction_id, Some(9));
        assert_eq!(c.meter.energy_wh, Some(100.0));
        assert_eq!(s.last_seq, 5);

        s.apply(&rec(
            6,
            Some("CP1"),
            Event::StopTransaction {
                transaction_id: Some(9),
                transaction_ref: None,
                meter_stop: 200,
                reason: None,
                timestamp: "y".into(),
                answered_by: Source::Cloud,
                forced: false,
            },
        ));
        assert!(s.chargers["CP1"].transactions.is_empty());

        s.apply(&rec(
            7,
            None,
            Event::GatewayStarted {
                version: "t".into(),
            },
        ));
        let c = &s.chargers["CP1"];
        assert!(!c.charger_link.up && !c.cloud_link.up);
        assert_eq!(c.charger_link.since_ms, Some(7000));
    }

    #[test]
    fn failed_reconnects_keep_the_down_since_time() {
        let mut s = LiveState::default();
        s.apply(&rec(
            1,
            Some("A"),
            Event::Disconnect {
                link: Link::Cloud,
                reason: "refused".into(),
                code: None,
            },
        ));
        s.apply(&rec(
            2,
            Some("A"),
            Event::Disconnect {
                link: Link::Cloud,
                reason: "timeout".into(),
                code: None,
            },
        ));
        let l = &s.chargers["A"].cloud_link;
        assert_eq!(
            (l.since_ms, l.reason.as_deref()),
            (Some(1000), Some("timeout"))
        );
    }

    #[test]
    fn connectors_beyond_the_cap_do_not_grow_the_state() {
        let mut st = LiveState::default();
        for (seq, connector) in (1..=1000u32).enumerate() {
            st.apply(&Record {
                seq: seq as u64 + 1,
                time_ms: 0,
                charger: Some("CP".into()),
                event: Event::StatusNotification {
                    connector,
                    status: "Available".into(),
                    error_code: "NoError".into(),
                    info: None,
                },
            });
        }
        let c = &st.chargers["CP"];
        assert_eq!(c.connectors.len(), MAX_CONNECTOR_ID as usize);
        assert!(c.connectors.keys().all(|k| *k <= MAX_CONNECTOR_ID));
    }

    #[test]
    fn a_charger_cannot_grow_the_state_with_long_texts_or_many_connectors() {
        let mut st = LiveState::default();
        for connector in 0..1_000 {
            st.apply(&rec(
                connector as u64 + 1,
                Some("CP"),
                Event::StatusNotification {
                    connector,
                    status: "Available".repeat(1_000),
                    error_code: "E".repeat(100_000),
                    info: None,
                },
            ));
        }
        let c = &st.chargers["CP"];
        assert_eq!(c.connectors.len() as u32, MAX_CONNECTOR_ID + 1);
        assert!(c
            .connectors
            .values()
            .all(|k| k.status.len() <= MAX_TEXT && k.error_code.len() <= MAX_TEXT));
    }
}
