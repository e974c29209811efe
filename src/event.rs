//! The journal's vocabulary: every event the gateway records, named as the
//! operator's log names them (StartTransaction, StatusNotification,
//! Connect, …), and the pure mapping from OCPP messages to those events.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::ocpp::messages::{self, decode, AnswerFields};

/// Which connection an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// charger ↔ gateway
    Charger,
    /// gateway ↔ cloud CSMS
    Cloud,
}

/// Who produced an answer or started an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Charger,
    Cloud,
    Gateway,
    Api,
    Cli,
    Web,
    Mqtt,
    /// Smart charging (schedules, load management).
    Smart,
}

/// A call's payload as the journal keeps it: secrets set through
/// ChangeConfiguration (AuthorizationKey, passwords) replaced, so that the
/// journal, the API and MQTT never show them.
pub fn redact(action: &str, request: &Value) -> Value {
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        k.contains("authorizationkey") || k.contains("password") || k.contains("secret")
    };
    if action == "ChangeConfiguration"
        && request
            .get("key")
            .and_then(Value::as_str)
            .is_some_and(secret)
    {
        let mut r = request.clone();
        r["value"] = Value::String("(redacted)".into());
        return r;
    }
    if action == "GetDiagnostics" {
        if let Some(loc) = request.get("location").and_then(Value::as_str) {
            let mut r = request.clone();
            r["location"] = redact_url(loc).into();
            return r;
        }
    }
    request.clone()
}

/// An upload URL without its secrets: the credentials in its authority
/// (`ftp://user:password@host`) and the one-time token of the gateway's
/// own upload listener (`/diagnostics/TOKEN/`).
fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let end = out[start..].find('/').map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@') {
            out.replace_range(start..start + at, "(redacted)");
        }
    }
    if let Some(i) = out.find("/diagnostics/").map(|i| i + "/diagnostics/".len()) {
        let end = out[i..].find('/').map_or(out.len(), |j| i + j);
        out.replace_range(i..end, "(redacted)");
    }
    out
}

/// One journal event. The `kind` tag is the name a person reads in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Event {
    /// The daemon started; every link is down until it says otherwise.
    GatewayStarted { version: String },
    /// The daemon is shutting down cleanly.
    GatewayStopping,
    /// A link came up.
    Connect {
        link: Link,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
    },
    /// A link went down (or an attempt to bring it up failed).
    Disconnect {
        link: Link,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
    },
    /// A charger was refused at the WebSocket handshake.
    Refused { reason: String, remote: String },
    BootNotification {
        vendor: String,
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        firmware: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        answered_by: Source,
    },
    StatusNotification {
        connector: u32,
        status: String,
        error_code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<String>,
    },
    Authorize {
        id_tag: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        answered_by: Source,
    },
    StartTransaction {
        connector: u32,
        id_tag: String,
        meter_start: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction_id: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        timestamp: String,
        answered_by: Source,
    },
    StopTransaction {
        transaction_id: i64,
        meter_stop: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        timestamp: String,
        answered_by: Source,
        /// Closed by the gateway after a force stop the charger did not
        /// follow: the meter reading may be incomplete, not billable.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        forced: bool,
    },
    MeterValues {
        connector: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction_id: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        energy_wh: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        power_w: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_a: Option<f64>,
    },
    /// Any other call from the charger (DataTransfer, firmware status, …).
    ChargerCall {
        action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        answered_by: Source,
    },
    /// A call sent to the charger (Reset, RemoteStartTransaction, …) and how
    /// it ended.
    RemoteAction {
        action: String,
        source: Source,
        request: Value,
        /// The charger's answer payload, when it answered with a CALLRESULT.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        /// A CALLERROR code, a timeout or a lost link.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A queued message the cloud answered after the gateway had answered
    /// the charger itself (offline replay).
    Replayed {
        action: String,
        queued_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local_transaction_id: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cloud_transaction_id: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
    },
    /// The cloud refused a replayed message; it will be retried.
    ReplayRetry {
        action: String,
        attempt: u32,
        error: String,
    },
    /// The cloud refused a queued message too often: kept as a dead letter.
    DeadLetter {
        action: String,
        queued_ms: i64,
        error: String,
    },
    /// The journal could not write for a while (disk full, I/O errors);
    /// written once it can again.
    StorageAlarm { error: String, failed_commits: u64 },
    /// A charger uploaded its diagnostics file to the gateway.
    DiagnosticsUploaded { file: String, bytes: u64 },
    /// A frame that broke the protocol, from either side.
    ProtocolError {
        from: Link,
        code: String,
        detail: String,
        /// The start of the offending frame, for troubleshooting.
        frame: String,
    },
    /// The gateway's limit for a charger changed: its schedule, the site's
    /// load, a pause or a cap by staff.
    LimitChanged { limit_a: f64, reason: String },
    /// Staff paused, capped or resumed a charger (`mode`: pause, cap,
    /// resume). Folded into the live state, so it outlives a restart.
    Override {
        mode: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit_a: Option<f64>,
        /// RFC 3339; none: until resumed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
        source: Source,
    },
    /// The site meter stopped answering; every charger falls back to the
    /// safe current.
    MeterLost { error: String, fallback_a: f64 },
    /// The site meter answers again; load sharing resumes.
    MeterRestored { detail: String },
}

impl Event {
    /// The kind name, as shown in the log and used in filters.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::GatewayStarted { .. } => "GatewayStarted",
            Event::GatewayStopping => "GatewayStopping",
            Event::Connect { .. } => "Connect",
            Event::Disconnect { .. } => "Disconnect",
            Event::Refused { .. } => "Refused",
            Event::BootNotification { .. } => "BootNotification",
            Event::StatusNotification { .. } => "StatusNotification",
            Event::Authorize { .. } => "Authorize",
            Event::StartTransaction { .. } => "StartTransaction",
            Event::StopTransaction { .. } => "StopTransaction",
            Event::MeterValues { .. } => "MeterValues",
            Event::ChargerCall { .. } => "ChargerCall",
            Event::RemoteAction { .. } => "RemoteAction",
            Event::Replayed { .. } => "Replayed",
            Event::ReplayRetry { .. } => "ReplayRetry",
            Event::DeadLetter { .. } => "DeadLetter",
            Event::DiagnosticsUploaded { .. } => "DiagnosticsUploaded",
            Event::StorageAlarm { .. } => "StorageAlarm",
            Event::ProtocolError { .. } => "ProtocolError",
            Event::LimitChanged { .. } => "LimitChanged",
            Event::Override { .. } => "Override",
            Event::MeterLost { .. } => "MeterLost",
            Event::MeterRestored { .. } => "MeterRestored",
        }
    }

    /// A one-line description for people (the CLI's log view).
    pub fn summary(&self) -> String {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        match self {
            Event::GatewayStarted { version } => format!("version {version}"),
            Event::GatewayStopping => String::new(),
            Event::Connect {
                link,
                remote,
                protocol,
            } => {
                format!(
                    "{link:?} link up{}{}",
                    remote
                        .as_ref()
                        .map(|r| format!(" from {r}"))
                        .unwrap_or_default(),
                    protocol
                        .as_ref()
                        .map(|p| format!(" ({p})"))
                        .unwrap_or_default()
                )
            }
            Event::Disconnect { link, reason, code } => {
                format!(
                    "{link:?} link down: {reason}{}",
                    code.map(|c| format!(" (code {c})")).unwrap_or_default()
                )
            }
            Event::Refused { reason, remote } => format!("{remote}: {reason}"),
            Event::BootNotification {
                vendor,
                model,
                firmware,
                status,
                answered_by,
                ..
            } => {
                format!(
                    "{vendor} {model} firmware {} → {} by {answered_by:?}",
                    opt(firmware),
                    opt(status)
                )
            }
            Event::StatusNotification {
                connector,
                status,
                error_code,
                info,
            } => format!(
                "connector {connector} {status}{}{}",
                if error_code == "NoError" {
                    String::new()
                } else {
                    format!(" error {error_code}")
                },
                info.as_ref().map(|i| format!(" ({i})")).unwrap_or_default()
            ),
            Event::Authorize {
                id_tag,
                status,
                answered_by,
            } => format!("{id_tag} → {} by {answered_by:?}", opt(status)),
            Event::StartTransaction {
                connector,
                id_tag,
                meter_start,
                transaction_id,
                status,
                ..
            } => format!(
                "connector {connector} tag {id_tag} meter {meter_start} Wh → transaction {} {}",
                transaction_id
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                opt(status)
            ),
            Event::StopTransaction {
                transaction_id,
                meter_stop,
                reason,
                forced,
                ..
            } => {
                format!(
                    "{}transaction {transaction_id} meter {meter_stop} Wh reason {}",
                    if *forced {
                        "FORCE-STOPPED (not billable) "
                    } else {
                        ""
                    },
                    opt(reason)
                )
            }
            Event::MeterValues {
                connector,
                transaction_id,
                energy_wh,
                power_w,
                current_a,
            } => {
                let f =
                    |v: &Option<f64>, u: &str| v.map(|v| format!(" {v}{u}")).unwrap_or_default();
                format!(
                    "connector {connector}{}{}{}{}",
                    transaction_id
                        .map(|t| format!(" transaction {t}"))
                        .unwrap_or_default(),
                    f(energy_wh, " Wh"),
                    f(power_w, " W"),
                    f(current_a, " A")
                )
            }
            Event::ChargerCall {
                action,
                status,
                answered_by,
            } => format!("{action} → {} by {answered_by:?}", opt(status)),
            Event::RemoteAction {
                action,
                source,
                result,
                error,
                ..
            } => match (result, error) {
                (_, Some(e)) => format!("{action} from {source:?}: {e}"),
                (Some(r), None) => format!("{action} from {source:?}: {r}"),
                (None, None) => format!("{action} from {source:?}"),
            },
            Event::Replayed {
                action,
                local_transaction_id,
                cloud_transaction_id,
                status,
                ..
            } => format!(
                "{action} delivered to the cloud{}{}",
                match (local_transaction_id, cloud_transaction_id) {
                    (Some(l), Some(c)) => format!(", transaction {l} is {c} in the cloud"),
                    _ => String::new(),
                },
                status
                    .as_ref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            Event::ReplayRetry {
                action,
                attempt,
                error,
            } => format!("{action} refused by the cloud (attempt {attempt}): {error}"),
            Event::DeadLetter { action, error, .. } => format!("{action} given up: {error}"),
            Event::DiagnosticsUploaded { file, bytes } => format!("{file} ({bytes} bytes)"),
            Event::StorageAlarm {
                error,
                failed_commits,
            } => format!("{failed_commits} journal commit(s) failed: {error}; writing again"),
            Event::ProtocolError {
                from, code, detail, ..
            } => format!("from {from:?}: {code}: {detail}"),
            Event::LimitChanged { limit_a, reason } => format!("limit {limit_a} A: {reason}"),
            Event::Override {
                mode,
                limit_a,
                until,
                source,
            } => format!(
                "{mode}{} by {source:?}{}",
                limit_a.map(|a| format!(" {a} A")).unwrap_or_default(),
                until
                    .as_ref()
                    .map(|u| format!(" until {u}"))
                    .unwrap_or_default()
            ),
            Event::MeterLost { error, fallback_a } => {
                format!("site meter lost ({error}); every charger falls back to {fallback_a} A")
            }
            Event::MeterRestored { detail } => format!("site meter back: {detail}"),
        }
    }
}

/// The event to journal for a charger's CALL, given its answer (`None`
/// when the call was journaled before being answered). Returns `None` for
/// calls that are not journaled (Heartbeat) or whose payload is unreadable
/// (the protocol error path journals those).
pub fn for_charger_call(
    action: &str,
    payload: &RawValue,
    answer: Option<&RawValue>,
    answered_by: Source,
) -> Option<Event> {
    if action == "Heartbeat" {
        return None; // the most frequent message: not even its answer is read
    }
    let fields = answer.map(AnswerFields::read).unwrap_or_default();
    Some(match action {
        "BootNotification" => {
            let b: messages::BootNotification = decode(payload).ok()?;
            Event::BootNotification {
                vendor: b.charge_point_vendor,
                model: b.charge_point_model,
                firmware: b.firmware_version,
                serial: b.charge_point_serial_number,
                status: fields.status(),
                answered_by,
            }
        }
        "StatusNotification" => {
            let s: messages::StatusNotification = decode(payload).ok()?;
            // OCPP 1.6 bounds these at 50 characters; a charger that sends
            // more must not make every record of it bigger.
            Event::StatusNotification {
                connector: s.connector_id,
                status: excerpt(&s.status, FIELD_MAX),
                error_code: excerpt(&s.error_code, FIELD_MAX),
                info: s.info.map(|i| excerpt(&i, FIELD_MAX)),
            }
        }
        "Authorize" => {
            let a: messages::Authorize = decode(payload).ok()?;
            Event::Authorize {
                id_tag: a.id_tag,
                status: fields.status(),
                answered_by,
            }
        }
        "StartTransaction" => {
            let s: messages::StartTransaction = decode(payload).ok()?;
            Event::StartTransaction {
                connector: s.connector_id,
                id_tag: s.id_tag,
                meter_start: s.meter_start,
                transaction_id: fields.transaction_id,
                status: fields.status(),
                timestamp: s.timestamp,
                answered_by,
            }
        }
        "StopTransaction" => {
            let s: messages::StopTransaction = decode(payload).ok()?;
            Event::StopTransaction {
                transaction_id: s.transaction_id,
                meter_stop: s.meter_stop,
                reason: s.reason,
                timestamp: s.timestamp,
                answered_by,
                forced: false,
            }
        }
        "MeterValues" => {
            let m: messages::MeterValues = decode(payload).ok()?;
            let s = m.summary();
            Event::MeterValues {
                connector: m.connector_id,
                transaction_id: m.transaction_id,
                energy_wh: s.energy_wh,
                power_w: s.power_w,
                current_a: s.current_a,
            }
        }
        other => Event::ChargerCall {
            action: other.to_string(),
            status: fields.status(),
            answered_by,
        },
    })
}

/// Whether a charger CALL is journaled as soon as it arrives (its answer
/// carries nothing worth keeping) rather than when it is answered.
pub fn journal_on_request(action: &str) -> bool {
    matches!(action, "StatusNotification" | "MeterValues")
}

/// The first `max` characters of a frame, cut on a character boundary.
/// The longest a charger's free-text field is kept (OCPP 1.6's CiString50).
pub const FIELD_MAX: usize = 50;

pub fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// One committed journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Commit time, milliseconds since the Unix epoch; never decreases.
    pub time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charger: Option<String>,
    #[serde(flatten)]
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn start_transaction_event_takes_the_id_from_the_answer() {
        let req = raw(
            r#"{"connectorId":2,"idTag":"T1","meterStart":100,"timestamp":"2026-01-01T00:00:00Z"}"#,
        );
        let ans = raw(r#"{"transactionId":77,"idTagInfo":{"status":"Accepted"}}"#);
        let ev = for_charger_call("StartTransaction", &req, Some(&ans), Source::Cloud).unwrap();
        assert_eq!(
            ev,
            Event::StartTransaction {
                connector: 2,
                id_tag: "T1".into(),
                meter_start: 100,
                transaction_id: Some(77),
                status: Some("Accepted".into()),
                timestamp: "2026-01-01T00:00:00Z".into(),
                answered_by: Source::Cloud
            }
        );
        assert_eq!(ev.kind(), "StartTransaction");
    }

    #[test]
    fn events_serialize_with_the_seed_names() {
        let ev = Event::StatusNotification {
            connector: 1,
            status: "SuspendedEVSE".into(),
            error_code: "NoError".into(),
            info: None,
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["kind"], "StatusNotification");
        assert_eq!(v["status"], "SuspendedEVSE");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn heartbeat_and_unreadable_payloads_are_not_journaled_here() {
        assert!(for_charger_call("Heartbeat", &raw("{}"), None, Source::Gateway).is_none());
        assert!(for_charger_call("StartTransaction", &raw("{}"), None, Source::Gateway).is_none());
        let ev = for_charger_call(
            "DataTransfer",
            &raw(r#"{"vendorId":"v"}"#),
            Some(&raw(r#"{"status":"Rejected"}"#)),
            Source::Cloud,
        );
        assert!(matches!(ev, Some(Event::ChargerCall { status: Some(s), .. }) if s == "Rejected"));
    }

    #[test]
    fn excerpt_cuts_on_char_boundaries() {
        assert_eq!(excerpt("héllo", 2), "hé…");
        assert_eq!(excerpt("hi", 5), "hi");
    }

    #[test]
    fn a_chargers_overlong_status_fields_are_cut_to_ocpps_50_characters() {
        let long = "x".repeat(5000);
        let p = serde_json::to_string(&serde_json::json!({
            "connectorId": 1, "status": "Available", "errorCode": long, "info": long
        }))
        .unwrap();
        let raw = RawValue::from_string(p).unwrap();
        let Some(Event::StatusNotification {
            error_code, info, ..
        }) = for_charger_call("StatusNotification", &raw, None, Source::Charger)
        else {
            panic!("a StatusNotification event");
        };
        assert_eq!(
            error_code.chars().count(),
            FIELD_MAX + 1,
            "50 and an ellipsis"
        );
        assert_eq!(info.unwrap().chars().count(), FIELD_MAX + 1);
    }

    #[test]
    fn upload_tokens_and_url_credentials_are_not_journaled() {
        let r = redact(
            "GetDiagnostics",
            &serde_json::json!({"location": "http://10.0.0.2:8888/diagnostics/AbC-123_x/", "retries": 1}),
        );
        assert_eq!(
            r["location"],
            "http://10.0.0.2:8888/diagnostics/(redacted)/"
        );
        assert_eq!(r["retries"], 1);
        let r = redact(
            "GetDiagnostics",
            &serde_json::json!({"location": "ftp://user:s3cret@ftp.example.invalid/logs/"}),
        );
        assert_eq!(r["location"], "ftp://(redacted)@ftp.example.invalid/logs/");
        let plain = serde_json::json!({"location": "https://upload.example.invalid/x"});
        assert_eq!(redact("GetDiagnostics", &plain), plain);
    }
}
