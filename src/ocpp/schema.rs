//! The official OCPP 1.6 and 2.0.1 JSON schemas of the requests the
//! gateway answers itself (standalone, cloud down, cloud silent), and the
//! OCPP-J error a payload that breaks one gets (OCPP-J 1.6 §4.2.3, 2.0.1
//! Part 4 §4.3). Relayed frames are never checked here: the cloud answers
//! those, byte for byte.
//!
//! The schemas in `schemas16/` and `schemas201/` are the ones the Python
//! `ocpp` package ships (MIT), validated with the `jsonschema` crate
//! (draft 4 for 1.6, draft 6 for 2.0.1, as each file says).

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind as Kind;
use serde_json::Value;

use super::Protocol;

/// A payload that breaks its schema: the OCPP-J error code and what is
/// wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: &'static str,
    pub description: String,
}

/// (action, schema text) for every 1.6 request the local controller answers.
pub const SCHEMAS: &[(&str, &str)] = &[
    ("Authorize", include_str!("schemas16/Authorize.json")),
    (
        "BootNotification",
        include_str!("schemas16/BootNotification.json"),
    ),
    ("DataTransfer", include_str!("schemas16/DataTransfer.json")),
    (
        "DiagnosticsStatusNotification",
        include_str!("schemas16/DiagnosticsStatusNotification.json"),
    ),
    (
        "FirmwareStatusNotification",
        include_str!("schemas16/FirmwareStatusNotification.json"),
    ),
    ("Heartbeat", include_str!("schemas16/Heartbeat.json")),
    ("MeterValues", include_str!("schemas16/MeterValues.json")),
    (
        "StartTransaction",
        include_str!("schemas16/StartTransaction.json"),
    ),
    (
        "StatusNotification",
        include_str!("schemas16/StatusNotification.json"),
    ),
    (
        "StopTransaction",
        include_str!("schemas16/StopTransaction.json"),
    ),
];

/// (action, schema text) for every 2.0.1 request the local controller answers.
pub const SCHEMAS_201: &[(&str, &str)] = &[
    ("Authorize", include_str!("schemas201/Authorize.json")),
    (
        "BootNotification",
        include_str!("schemas201/BootNotification.json"),
    ),
    ("DataTransfer", include_str!("schemas201/DataTransfer.json")),
    (
        "FirmwareStatusNotification",
        include_str!("schemas201/FirmwareStatusNotification.json"),
    ),
    ("Heartbeat", include_str!("schemas201/Heartbeat.json")),
    (
        "LogStatusNotification",
        include_str!("schemas201/LogStatusNotification.json"),
    ),
    ("MeterValues", include_str!("schemas201/MeterValues.json")),
    ("NotifyEvent", include_str!("schemas201/NotifyEvent.json")),
    ("NotifyReport", include_str!("schemas201/NotifyReport.json")),
    (
        "SecurityEventNotification",
        include_str!("schemas201/SecurityEventNotification.json"),
    ),
    (
        "StatusNotification",
        include_str!("schemas201/StatusNotification.json"),
    ),
    (
        "TransactionEvent",
        include_str!("schemas201/TransactionEvent.json"),
    ),
];

type Validators = HashMap<&'static str, jsonschema::Validator>;

fn build(schemas: &'static [(&'static str, &'static str)]) -> Validators {
    schemas
        .iter()
        .filter_map(|(action, text)| {
            // Built in: a broken schema is a bug caught by the tests.
            // Formats (date-time) are not enforced: chargers in the field
            // send timestamps clouds accept (no zone, no seconds), and
            // refusing one offline would lose it. The draft is the one the
            // file names (`$schema`).
            let schema: Value = serde_json::from_str(text).ok()?;
            let v = jsonschema::options()
                .should_validate_formats(false)
                .build(&schema)
                .ok()?;
            Some((*action, v))
        })
        .collect()
}

fn validators(proto: Protocol) -> &'static Validators {
    static V16: OnceLock<Validators> = OnceLock::new();
    static V201: OnceLock<Validators> = OnceLock::new();
    match proto {
        Protocol::Ocpp16 => V16.get_or_init(|| build(SCHEMAS)),
        Protocol::Ocpp201 => V201.get_or_init(|| build(SCHEMAS_201)),
    }
}

/// Whether `action` has a schema here for `proto`.
pub fn covers(proto: Protocol, action: &str) -> bool {
    validators(proto).contains_key(action)
}

/// Check a request payload against its action's schema; the error names
/// the OCPP-J code (as `proto` spells it) and what is wrong, and where.
pub fn check(proto: Protocol, action: &str, payload: &Value) -> Result<(), Violation> {
    let Some(v) = validators(proto).get(action) else {
        return Ok(());
    };
    let Err(e) = v.validate(payload) else {
        return Ok(());
    };
    let v16 = proto == Protocol::Ocpp16;
    let code = match e.kind() {
        Kind::Type { .. } => "TypeConstraintViolation",
        Kind::Required { .. } | Kind::MinItems { .. } | Kind::MaxItems { .. } if v16 => {
            "OccurenceConstraintViolation"
        }
        // 2.0.1 spells it right.
        Kind::Required { .. } | Kind::MinItems { .. } | Kind::MaxItems { .. } => {
            "OccurrenceConstraintViolation"
        }
        Kind::AdditionalProperties { .. } if v16 => "FormationViolation",
        Kind::AdditionalProperties { .. } => "FormatViolation",
        _ => "PropertyConstraintViolation",
    };
    let at = e.instance_path().to_string();
    let at = if at.is_empty() { "/".into() } else { at };
    Err(Violation {
        code,
        description: crate::event::excerpt(
            &crate::text::printable(&format!("{action} at {at}: {e}")),
            200,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(action: &str, payload: Value) -> Option<&'static str> {
        check(Protocol::Ocpp16, action, &payload)
            .err()
            .map(|e| e.code)
    }

    fn code_201(action: &str, payload: Value) -> Option<&'static str> {
        check(Protocol::Ocpp201, action, &payload)
            .err()
            .map(|e| e.code)
    }

    #[test]
    fn every_schema_builds_and_every_locally_answered_request_has_one() {
        let v16 = validators(Protocol::Ocpp16);
        assert_eq!(v16.len(), SCHEMAS.len(), "each 1.6 schema builds");
        let v201 = validators(Protocol::Ocpp201);
        assert_eq!(v201.len(), SCHEMAS_201.len(), "each 2.0.1 schema builds");
        for action in crate::ocpp::local::ANSWERED {
            assert!(covers(Protocol::Ocpp16, action), "{action} has no schema");
        }
        for action in crate::ocpp::local::ANSWERED_201 {
            assert!(
                covers(Protocol::Ocpp201, action),
                "{action} (2.0.1) has no schema"
            );
        }
    }

    #[test]
    fn the_201_schemas_give_the_201_codes() {
        assert_eq!(code_201("Heartbeat", json!({})), None);
        assert_eq!(
            code_201("Heartbeat", json!({"x": 1})),
            Some("FormatViolation")
        );
        assert_eq!(
            code_201("BootNotification", json!({"reason": "PowerUp"})),
            Some("OccurrenceConstraintViolation"),
            "2.0.1 spells it with two r's"
        );
        assert_eq!(
            code_201(
                "Authorize",
                json!({"idToken": {"idToken": "T", "type": "Fingerprint"}})
            ),
            Some("PropertyConstraintViolation"),
            "not an IdTokenEnumType"
        );
        let tx = json!({"eventType": "Started", "timestamp": "2030-01-07T10:00:00Z",
                        "triggerReason": "Authorized", "seqNo": 0,
                        "transactionInfo": {"transactionId": "t-1"}});
        assert_eq!(code_201("TransactionEvent", tx.clone()), None);
        let mut bad = tx;
        bad["seqNo"] = json!("zero");
        assert_eq!(
            code_201("TransactionEvent", bad),
            Some("TypeConstraintViolation")
        );
    }

    #[test]
    fn each_error_class_gets_its_ocpp_j_code() {
        assert_eq!(code("Heartbeat", json!({})), None);
        assert_eq!(
            code("Heartbeat", json!({"extra": 1})),
            Some("FormationViolation")
        );
        assert_eq!(
            code("DataTransfer", json!({"vendorId": 7})),
            Some("TypeConstraintViolation")
        );
        assert_eq!(
            code("DataTransfer", json!({"vendorId": "v", "data": []})),
            Some("TypeConstraintViolation")
        );
        assert_eq!(
            code("Authorize", json!({"idTag": "x".repeat(25)})),
            Some("PropertyConstraintViolation"),
            "idTag is at most 20 characters"
        );
        assert_eq!(
            code(
                "StatusNotification",
                json!({"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"})
            ),
            Some("PropertyConstraintViolation")
        );
        assert_eq!(
            code("BootNotification", json!({"chargePointVendor": "V"})),
            Some("OccurenceConstraintViolation")
        );
        let start = json!({"connectorId": 1, "idTag": "T", "meterStart": 0,
                           "timestamp": "2030-01-07T10:00:00Z"});
        assert_eq!(code("StartTransaction", start), None);
        let e = check(Protocol::Ocpp16, "Authorize", &json!({"idTag": 5})).unwrap_err();
        assert!(e.description.contains("/idTag"), "{}", e.description);
    }
}
