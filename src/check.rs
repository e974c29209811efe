//! "Run a check": asks the charger to report (TriggerMessage for
//! StatusNotification, Heartbeat and MeterValues) and combines its answers
//! with the gateway's own view of it (both links, last event, firmware,
//! connector errors, outbox) into a report that says plainly what looks
//! wrong. `findings` is pure, so the judgement is unit-tested.

use crate::ocpp::messages::ChargePointStatus;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::event::Source;
use crate::hub::Ctx;
use crate::outbox::Stats;

use crate::state::ChargerState;

/// One TriggerMessage and the charger's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trigger {
    pub message: String,
    pub answer: String,
}

/// The check report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub connected: bool,
    pub triggers: Vec<Trigger>,
    pub state: ChargerState,
    pub outbox: Stats,
    /// What looks wrong, in words; empty when all is well.
    pub findings: Vec<String>,
}

/// Judge what the gateway knows about a charger. Pure.
pub fn findings(
    connected: bool,
    cloud_configured: bool,
    s: &ChargerState,
    outbox: &Stats,
    triggers: &[Trigger],
    now_ms: i64,
) -> Vec<String> {
    let mut f = Vec::new();
    if !connected {
        let since = s
            .charger_link
            .since_ms
            .map(|t| format!(" for {}", ago(now_ms - t)))
            .unwrap_or_default();
        f.push(format!("charger is not connected to the gateway{since}"));
    }
    if cloud_configured && connected && !s.cloud_link.up {
        let why = s.cloud_link.reason.as_deref().unwrap_or("unknown reason");
        f.push(format!(
            "cloud link is down ({why}); the gateway answers the charger itself"
        ));
    }
    if s.boot.is_none() {
        f.push("no BootNotification seen: vendor, model and firmware unknown".into());
    }
    for (n, c) in &s.connectors {
        let status = ChargePointStatus::parse(&c.status);
        if status == Some(ChargePointStatus::Faulted) || c.error_code != "NoError" {
            f.push(format!(
                "connector {n} is {} with error {}",
                c.status, c.error_code
            ));
        } else if status == Some(ChargePointStatus::Unavailable) {
            f.push(format!("connector {n} is Unavailable"));
        }
    }
    for t in triggers {
        if t.answer != "Accepted" {
            f.push(format!("TriggerMessage {}: {}", t.message, t.answer));
        }
    }
    if outbox.dead_letters > 0 {
        f.push(format!(
            "{} message(s) the cloud refused for good (dead letters)",
            outbox.dead_letters
        ));
    }
    if let Some(oldest) = outbox.oldest_ms.filter(|_| outbox.depth > 0) {
        if now_ms - oldest > 10 * 60_000 {
            f.push(format!(
                "{} message(s) waiting for the cloud, oldest {} old",
                outbox.depth,
                ago(now_ms - oldest)
            ));
        }
    }
    if s.protocol_errors > 0 {
        f.push(format!(
            "{} protocol error(s) in the log",
            s.protocol_errors
        ));
    }
    f
}

fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// Run the check on a charger.
pub async fn run(ctx: &Ctx, charger: &str, source: Source, wait: Duration) -> Report {
    let mut triggers = Vec::new();
    let connected = ctx.registry.get(charger).is_some();
    if connected {
        for message in ["StatusNotification", "Heartbeat", "MeterValues"] {
            let payload = json!({ "requestedMessage": message });
            let answer = match ctx
                .registry
                .call(charger, "TriggerMessage", payload, source, wait)
                .await
            {
                Some(o) => o.brief(),
                None => "charger disconnected".into(),
            };
            triggers.push(Trigger {
                message: message.into(),
                answer,
            });
        }
        // Give the triggered messages a moment to arrive and be journaled.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let state = ctx
        .journal
        .state()
        .chargers
        .get(charger)
        .map(|c| (**c).clone())
        .unwrap_or_else(|| ChargerState {
            id: charger.into(),
            ..Default::default()
        });
    let outbox = ctx.journal.outbox_stats(charger).unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let findings = findings(
        connected,
        ctx.connector.is_some(),
        &state,
        &outbox,
        &triggers,
        now,
    );
    Report {
        connected,
        triggers,
        state,
        outbox,
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BootInfo, ConnectorState, LinkState};

    fn healthy() -> ChargerState {
        let mut s = ChargerState {
            id: "CP".into(),
            ..Default::default()
        };
        s.charger_link = LinkState {
            up: true,
            since_ms: Some(0),
            reason: None,
            protocol: None,
            remote: None,
        };
        s.cloud_link = LinkState {
            up: true,
            since_ms: Some(0),
            reason: None,
            protocol: None,
            remote: None,
        };
        s.boot = Some(BootInfo {
            vendor: "V".into(),
            model: "M".into(),
            firmware: Some("1".into()),
            serial: None,
            time_ms: 0,
        });
        s.connectors.insert(
            1,
            ConnectorState {
                status: "Available".into(),
                error_code: "NoError".into(),
                since_ms: 0,
            },
        );
        s
    }

    #[test]
    fn a_healthy_charger_has_no_findings() {
        let t = vec![Trigger {
            message: "Heartbeat".into(),
            answer: "Accepted".into(),
        }];
        assert!(findings(true, true, &healthy(), &Stats::default(), &t, 1000).is_empty());
    }

    #[test]
    fn problems_are_said_plainly() {
        let mut s = healthy();
        s.cloud_link = LinkState {
            up: false,
            since_ms: Some(0),
            reason: Some("connect failed: refused".into()),
            protocol: None,
            remote: None,
        };
        s.connectors.insert(
            2,
            ConnectorState {
                status: "Faulted".into(),
                error_code: "GroundFailure".into(),
                since_ms: 0,
            },
        );
        s.protocol_errors = 3;
        let t = vec![Trigger {
            message: "MeterValues".into(),
            answer: "Rejected".into(),
        }];
        let ob = Stats {
            depth: 4,
            oldest_ms: Some(0),
            dead_letters: 1,
        };
        let f = findings(true, true, &s, &ob, &t, 3_600_000);
        let all = f.join("\n");
        for want in [
            "cloud link is down (connect failed: refused)",
            "connector 2 is Faulted with error GroundFailure",
            "TriggerMessage MeterValues: Rejected",
            "1 message(s) the cloud refused",
            "4 message(s) waiting for the cloud, oldest 60 min old",
            "3 protocol error(s)",
        ] {
            assert!(all.contains(want), "{want:?} missing from:\n{all}");
        }
        let f = findings(false, true, &s, &Stats::default(), &[], 7_200_000);
        assert!(
            f[0].starts_with("charger is not connected to the gateway for 2 h"),
            "{f:?}"
        );
    }
}
