//! The journal's vocabulary: every event the gateway records, named as the
//! operator's log names them (StartTransaction, StatusNotification,
//! Connect, …), and the pure mapping from OCPP messages to those events.

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod from_charger;
mod summary;
pub use self::from_charger::{
    for_charger_call, for_charger_call_201, for_charger_call_at, journal_on_request, TxEvses,
};

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
    /// A second backend (`[[mirror]]`); which one is in the record.
    Mirror,
}

impl std::fmt::Display for Link {
    /// The same lowercase name as in JSON.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::Charger => "charger",
            Link::Cloud => "cloud",
        })
    }
}

impl std::fmt::Display for Source {
    /// The same lowercase name as in JSON (`cli`, `cloud`, …), so the text
    /// log and the JSON log say the same.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Charger => "charger",
            Source::Cloud => "cloud",
            Source::Gateway => "gateway",
            Source::Api => "api",
            Source::Cli => "cli",
            Source::Web => "web",
            Source::Mqtt => "mqtt",
            Source::Smart => "smart",
            Source::Mirror => "mirror",
        })
    }
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
    /// A charger's link to a second backend came up.
    MirrorConnect {
        mirror: String,
        remote: String,
        protocol: String,
    },
    /// A charger's link to a second backend went down (or could not be
    /// opened: journaled once until it changes).
    MirrorDisconnect { mirror: String, reason: String },
    /// A charger was refused at the WebSocket handshake.
    Refused {
        reason: String,
        remote: String,
        /// Refusals like it from the same address that were not journaled
        /// since the last one (a flood is journaled once a minute).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repeated: Option<u64>,
    },
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
        /// OCPP 2.0.1's transaction id (a string).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction_ref: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        timestamp: String,
        answered_by: Source,
    },
    StopTransaction {
        /// OCPP 1.6's transaction id (always present for a 1.6 charger).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction_id: Option<i64>,
        /// OCPP 2.0.1's transaction id (a string).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction_ref: Option<String>,
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
        /// OCPP 2.0.1's transaction id (a string).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction_ref: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        energy_wh: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        power_w: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_a: Option<f64>,
        /// How far the charger's clock is ahead of the gateway's (seconds),
        /// from the newest sample's timestamp at receipt; none where it was
        /// not measured (a message answered later, from a queue).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clock_skew_s: Option<i64>,
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
        /// The larger action this call was a step of (`ForceStop`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part_of: Option<String>,
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
    StorageAlarm {
        error: String,
        failed_commits: u64,
        /// When the first failed commit happened (ms since the epoch);
        /// the record's own time is when writing worked again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        began_ms: Option<i64>,
    },
    /// A charger uploaded its diagnostics file to the gateway.
    DiagnosticsUploaded { file: String, bytes: u64 },
    /// A frame that broke the protocol, from either side.
    ProtocolError {
        from: Link,
        code: String,
        detail: String,
        /// The start of the offending frame, for troubleshooting.
        frame: String,
        /// Errors with the same code on this connection not journaled
        /// since the last one (once a minute per code).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repeated: Option<u64>,
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
            Event::MirrorConnect { .. } => "MirrorConnect",
            Event::MirrorDisconnect { .. } => "MirrorDisconnect",
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
    use serde_json::value::RawValue;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn a_201_transaction_reads_like_a_16_one() {
        let mut mem = TxEvses::default();
        let mut ev = |action: &str, req: &str| {
            for_charger_call_201(action, &raw(req), None, Source::Gateway, &mut mem, None)
        };
        let start = ev(
            "TransactionEvent",
            r#"{"eventType":"Started","timestamp":"t0","triggerReason":"CablePluggedIn","seqNo":0,
                "transactionInfo":{"transactionId":"T-9"},"evse":{"id":2},
                "meterValue":[{"timestamp":"t0","sampledValue":[{"value":1000}]}]}"#,
        );
        assert_eq!(start.len(), 1);
        assert!(
            matches!(&start[0], Event::StartTransaction { connector: 2, meter_start: 1000, id_tag, .. } if id_tag == "-")
        );
        // Later events need not name the EVSE, and the end need not carry
        // a reading: both are remembered.
        let reading = ev(
            "TransactionEvent",
            r#"{"eventType":"Updated","timestamp":"t1","triggerReason":"MeterValuePeriodic","seqNo":1,
                "transactionInfo":{"transactionId":"T-9"},
                "meterValue":[{"timestamp":"t1","sampledValue":[{"value":2.5,"unitOfMeasure":{"unit":"kWh"}}]}]}"#,
        );
        assert!(
            matches!(&reading[..], [Event::MeterValues { connector: 2, energy_wh: Some(wh), .. }] if *wh == 2500.0)
        );
        let quiet = ev(
            "TransactionEvent",
            r#"{"eventType":"Updated","timestamp":"t2","triggerReason":"Trigger","seqNo":2,
                "transactionInfo":{"transactionId":"T-9"}}"#,
        );
        assert_eq!(
            quiet[0].summary(),
            "TransactionEvent → Updated Trigger seqNo 2 by gateway"
        );
        let end = ev(
            "TransactionEvent",
            r#"{"eventType":"Ended","timestamp":"t3","triggerReason":"EVDeparted","seqNo":3,
                "transactionInfo":{"transactionId":"T-9","stoppedReason":"EVDisconnected"}}"#,
        );
        assert_eq!(
            end[0].summary(),
            "transaction T-9 meter 2500 Wh reason EVDisconnected"
        );
        // Unreadable or unknown: still journaled, by name.
        let odd = ev("TransactionEvent", r#"{"eventType":"Started"}"#);
        assert_eq!(odd[0].kind(), "ChargerCall");
        assert!(ev("Heartbeat", "{}").is_empty());
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
                transaction_ref: None,
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
