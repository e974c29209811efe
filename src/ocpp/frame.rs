//! OCPP-J framing: parse a WebSocket text message into a CALL, CALLRESULT or
//! CALLERROR, and build the frames the gateway sends itself. Pure: no IO.
//!
//! The gateway relays the original text byte for byte; parsing is only for
//! journaling and for matching results to the calls they answer, so the
//! payload stays a borrowed-then-boxed `RawValue` and is never re-encoded.

use serde_json::value::RawValue;
use serde_json::Value;

use super::Protocol;

/// Longest message id the gateway accepts (OCPP-J: "maximum of 36 characters").
pub const MAX_ID_LEN: usize = 36;

/// One parsed OCPP-J frame.
#[derive(Debug)]
pub enum Frame {
    /// `[2, id, action, payload]`
    Call {
        id: String,
        action: super::Action,
        payload: Box<RawValue>,
    },
    /// `[3, id, payload]`
    CallResult { id: String, payload: Box<RawValue> },
    /// `[4, id, code, description, details]`
    CallError {
        id: String,
        code: String,
        description: String,
    },
}

impl Frame {
    /// The message id, whatever the frame type.
    pub fn id(&self) -> &str {
        match self {
            Frame::Call { id, .. } | Frame::CallResult { id, .. } | Frame::CallError { id, .. } => {
                id
            }
        }
    }
}

/// What was wrong with a frame, in OCPP-J's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameErrorKind {
    /// Not JSON, not an array, or elements of the wrong type.
    Formation,
    /// A message type number that is not 2, 3 or 4.
    UnknownMessageType,
    /// The id is longer than OCPP-J allows.
    IdTooLong,
}

/// A frame that could not be parsed. `id` is the message id when one could
/// be read, so the CALLERROR answers the right call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct FrameError {
    pub kind: FrameErrorKind,
    pub id: Option<String>,
    /// `Some(2)` when the frame looked like a CALL: only CALLs get a CALLERROR.
    pub message_type: Option<u64>,
    pub detail: String,
}

impl FrameError {
    /// The CALLERROR code for this error under the given protocol version:
    /// 1.6 spells it `FormationViolation`, 2.0.1 `FormatViolation`.
    pub fn error_code(&self, proto: Protocol) -> &'static str {
        match (self.kind, proto) {
            (FrameErrorKind::UnknownMessageType, Protocol::Ocpp201) => "MessageTypeNotSupported",
            (FrameErrorKind::UnknownMessageType, Protocol::Ocpp16) => "ProtocolError",
            (_, Protocol::Ocpp16) => "FormationViolation",
            (_, Protocol::Ocpp201) => "FormatViolation",
        }
    }

    /// Whether the sender expects an answer: a broken CALLRESULT or
    /// CALLERROR must never be answered (that would loop between peers).
    pub fn wants_reply(&self) -> bool {
        !matches!(self.message_type, Some(3) | Some(4))
    }

    /// The id to put in the CALLERROR: the frame's own, else "-1" as OCPP
    /// 2.0.1 prescribes for messages whose id cannot be read.
    pub fn reply_id(&self) -> &str {
        self.id.as_deref().unwrap_or("-1")
    }
}

fn err(
    kind: FrameErrorKind,
    id: Option<String>,
    mt: Option<u64>,
    detail: impl Into<String>,
) -> FrameError {
    FrameError {
        kind,
        id,
        message_type: mt,
        detail: detail.into(),
    }
}

/// Parse one OCPP-J text message.
pub fn parse(text: &str) -> Result<Frame, FrameError> {
    use FrameErrorKind::*;
    let parts: Vec<&RawValue> = serde_json::from_str(text)
        .map_err(|e| err(Formation, None, None, format!("not a JSON array: {e}")))?;
    let mt = parts
        .first()
        .and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
        .ok_or_else(|| {
            err(
                Formation,
                None,
                None,
                "first element must be the message type number",
            )
        })?;
    let id = parts
        .get(1)
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    let Some(id) = id else {
        return Err(err(
            Formation,
            None,
            Some(mt),
            "second element must be the message id (a string)",
        ));
    };
    if id.len() > MAX_ID_LEN {
        return Err(err(
            IdTooLong,
            None,
            Some(mt),
            format!("message id longer than {MAX_ID_LEN} characters"),
        ));
    }
    let bad = |detail: &str| malformed(&id, mt, detail);
    match mt {
        2 => call_of(id, mt, &parts),
        3 => {
            if parts.len() != 3 {
                return Err(bad("a CALLRESULT has 3 elements: [3, id, payload]"));
            }
            if !parts[2].get().trim_start().starts_with('{') {
                return Err(bad("payload must be a JSON object"));
            }
            Ok(Frame::CallResult {
                id,
                payload: boxed(parts[2]),
            })
        }
        4 => call_error_of(id, mt, &parts),
        other => Err(err(
            UnknownMessageType,
            Some(id),
            Some(other),
            format!("unknown message type {other} (expected 2, 3 or 4)"),
        )),
    }
}

/// A frame of type `mt` with message id `id` that is malformed.
fn malformed(id: &str, mt: u64, detail: &str) -> FrameError {
    err(
        FrameErrorKind::Formation,
        Some(id.to_string()),
        Some(mt),
        detail,
    )
}

/// A CALL's action and payload, checked.
fn call_of(id: String, mt: u64, parts: &[&RawValue]) -> Result<Frame, FrameError> {
    let bad = |detail: &str| malformed(&id, mt, detail);
    if parts.len() != 4 {
        return Err(bad("a CALL has 4 elements: [2, id, action, payload]"));
    }
    let action: String =
        serde_json::from_str(parts[2].get()).map_err(|_| bad("action must be a string"))?;
    if action.is_empty() || action.len() > 64 || !action.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(bad("action must be a short alphanumeric name"));
    }
    if !parts[3].get().trim_start().starts_with('{') {
        return Err(bad("payload must be a JSON object"));
    }
    Ok(Frame::Call {
        id,
        action: super::Action::parse(&action),
        payload: boxed(parts[3]),
    })
}

/// A CALLERROR's code and description, checked.
fn call_error_of(id: String, mt: u64, parts: &[&RawValue]) -> Result<Frame, FrameError> {
    let bad = |detail: &str| malformed(&id, mt, detail);
    if parts.len() != 5 {
        return Err(bad(
            "a CALLERROR has 5 elements: [4, id, code, description, details]",
        ));
    }
    let code: String =
        serde_json::from_str(parts[2].get()).map_err(|_| bad("error code must be a string"))?;
    let description: String = serde_json::from_str(parts[3].get())
        .map_err(|_| bad("error description must be a string"))?;
    Ok(Frame::CallError {
        id,
        code,
        description,
    })
}

fn boxed(v: &RawValue) -> Box<RawValue> {
    v.to_owned()
}

/// Build a CALL frame.
pub fn call(id: &str, action: &str, payload: &Value) -> String {
    serde_json::json!([2, id, action, payload]).to_string()
}

/// Build a CALL frame around a payload that is already JSON text, keeping
/// its bytes.
pub fn call_raw(id: &str, action: &str, payload_json: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    format!("[2,{},{},{}]", q(id), q(action), payload_json)
}

/// Build a CALLRESULT frame.
pub fn call_result(id: &str, payload: &Value) -> String {
    serde_json::json!([3, id, payload]).to_string()
}

/// Build a CALLERROR frame with empty details.
pub fn call_error(id: &str, code: &str, description: &str) -> String {
    serde_json::json!([4, id, code, description, {}]).to_string()
}

/// A random (version 4) UUID, as OCPP 2.0.1 message ids are written.
/// Ids need to be unique, not secret: `fastrand` is enough.
pub fn uuid_v4() -> String {
    let b = (fastrand::u128(..) & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_2_0_1_message_ids_are_version_4_uuids() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36, "{a}");
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "version 4: {a}");
        assert!("89ab".contains(&parts[3][..1]), "RFC 4122 variant: {a}");
        assert_ne!(a, uuid_v4());
    }

    #[test]
    fn parses_the_three_frame_types() {
        match parse(r#"[2,"a1","Heartbeat",{}]"#).unwrap() {
            Frame::Call {
                id,
                action,
                payload,
            } => {
                assert_eq!(
                    (id.as_str(), action.as_str(), payload.get()),
                    ("a1", "Heartbeat", "{}")
                );
            }
            f => panic!("{f:?}"),
        }
        match parse(r#"[3,"a1",{"currentTime":"2026-01-01T00:00:00Z"}]"#).unwrap() {
            Frame::CallResult { id, payload } => {
                assert_eq!(id, "a1");
                assert!(payload.get().contains("currentTime"));
            }
            f => panic!("{f:?}"),
        }
        match parse(r#"[4,"a1","NotImplemented","nope",{}]"#).unwrap() {
            Frame::CallError {
                id,
                code,
                description,
            } => {
                assert_eq!(
                    (id.as_str(), code.as_str(), description.as_str()),
                    ("a1", "NotImplemented", "nope")
                );
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn payload_keeps_its_original_bytes() {
        let text = r#"[2, "x", "MeterValues", {"connectorId": 1,  "meterValue": [ ]}]"#;
        let Frame::Call { payload, .. } = parse(text).unwrap() else {
            panic!()
        };
        assert_eq!(payload.get(), r#"{"connectorId": 1,  "meterValue": [ ]}"#);
    }

    #[test]
    fn malformed_frames_are_classified() {
        let e = parse("not json").unwrap_err();
        assert_eq!((e.kind, e.reply_id()), (FrameErrorKind::Formation, "-1"));
        assert_eq!(e.error_code(Protocol::Ocpp16), "FormationViolation");
        assert_eq!(e.error_code(Protocol::Ocpp201), "FormatViolation");
        assert!(e.wants_reply());

        let e = parse(r#"[2,"id7","Heartbeat"]"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("id7"));
        let e = parse(r#"[2,"id7","Heartbeat",[]]"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("id7"));
        let e = parse(r#"[2,7,"Heartbeat",{}]"#).unwrap_err();
        assert_eq!(e.reply_id(), "-1");
        let e = parse(r#"[9,"q",{}]"#).unwrap_err();
        assert_eq!(e.kind, FrameErrorKind::UnknownMessageType);
        assert_eq!(e.error_code(Protocol::Ocpp16), "ProtocolError");
        let e = parse(r#"[3,"q"]"#).unwrap_err();
        assert!(!e.wants_reply(), "a broken CALLRESULT is never answered");
        let long = format!(r#"[2,"{}","Heartbeat",{{}}]"#, "x".repeat(37));
        assert_eq!(parse(&long).unwrap_err().kind, FrameErrorKind::IdTooLong);
        assert!(parse(r#"[2,"a","Heart beat",{}]"#).is_err());
        assert!(parse("[]").is_err());
        assert!(
            parse(&"[".repeat(10_000)).is_err(),
            "deep nesting is an error, not a stack overflow"
        );
    }

    #[test]
    fn built_frames_parse_back() {
        let v = serde_json::json!({"status": "Accepted"});
        assert!(matches!(
            parse(&call("1", "Reset", &v)).unwrap(),
            Frame::Call { .. }
        ));
        assert!(matches!(
            parse(&call_result("1", &v)).unwrap(),
            Frame::CallResult { .. }
        ));
        assert!(matches!(
            parse(&call_error("1", "GenericError", "x")).unwrap(),
            Frame::CallError { .. }
        ));
        match parse(&call_raw("q\"1", "MeterValues", r#"{"a": 1}"#)).unwrap() {
            Frame::Call { id, payload, .. } => {
                assert_eq!((id.as_str(), payload.get()), ("q\"1", r#"{"a": 1}"#))
            }
            f => panic!("{f:?}"),
        }
    }
}
