//! The official OCPP 1.6 JSON schemas of the requests the gateway answers
//! itself (standalone, cloud down, cloud silent), and the OCPP-J error a
//! payload that breaks one gets (OCPP-J 1.6 §4.2.3). Relayed frames are
//! never checked here: the cloud answers those, byte for byte.
//!
//! The schemas in `schemas16/` are the ones the Python `ocpp` package
//! ships (MIT), validated with the `jsonschema` crate (draft 4).

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind as Kind;
use serde_json::Value;

/// A payload that breaks its schema: the OCPP-J error code and what is
/// wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: &'static str,
    pub description: String,
}

/// (action, schema text) for every request the local controller answers.
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

fn validators() -> &'static HashMap<&'static str, jsonschema::Validator> {
    static V: OnceLock<HashMap<&'static str, jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| {
        SCHEMAS
            .iter()
            .filter_map(|(action, text)| {
                // Built in: a broken schema is a bug caught by the tests.
                // Formats (date-time) are not enforced: chargers in the
                // field send timestamps clouds accept (no zone, no
                // seconds), and refusing one offline would lose it.
                let schema: Value = serde_json::from_str(text).ok()?;
                let v = jsonschema::draft4::options()
                    .should_validate_formats(false)
                    .build(&schema)
                    .ok()?;
                Some((*action, v))
            })
            .collect()
    })
}

/// Whether `action` has a schema here.
pub fn covers(action: &str) -> bool {
    validators().contains_key(action)
}

/// Check a request payload against its action's schema; the error names
/// the OCPP-J code and what is wrong, and where.
pub fn check(action: &str, payload: &Value) -> Result<(), Violation> {
    let Some(v) = validators().get(action) else {
        return Ok(());
    };
    let Err(e) = v.validate(payload) else {
        return Ok(());
    };
    let code = match e.kind() {
        Kind::Type { .. } => "TypeConstraintViolation",
        Kind::Required { .. } | Kind::MinItems { .. } | Kind::MaxItems { .. } => {
            "OccurenceConstraintViolation"
        }
        Kind::AdditionalProperties { .. } => "FormationViolation",
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
        check(action, &payload).err().map(|e| e.code)
    }

    #[test]
    fn every_schema_builds_and_every_locally_answered_request_has_one() {
        assert_eq!(validators().len(), SCHEMAS.len(), "each schema builds");
        for action in crate::ocpp::local::ANSWERED {
            assert!(covers(action), "{action} has no schema");
        }
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
        let e = check("Authorize", &json!({"idTag": 5})).unwrap_err();
        assert!(e.description.contains("/idTag"), "{}", e.description);
    }
}
