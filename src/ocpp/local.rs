//! The gateway as a local controller: the answers it gives a charger when no
//! cloud is configured or the cloud link is down, so chargers keep charging
//! (OCPP 1.6 in [`answer`], 2.0.1 in [`answer_201`]). Pure: the caller
//! supplies the clock, the policy and transaction ids.

use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::messages::{self, decode};

/// How an id tag is answered while the gateway answers on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthPolicy {
    /// Every id tag is accepted (a site where anyone may charge).
    AcceptAll,
    /// Known tags get their listed status; unknown tags are accepted, as
    /// OCPP's `AllowOfflineTxForUnknownId` does.
    LocalList,
    /// Known tags get their listed status; unknown tags are `Invalid`.
    RejectUnknown,
}

/// What the local controller needs to know to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub authorize: AuthPolicy,
    /// Local authorization list: id tag → status (`Accepted`, `Blocked`, …).
    pub id_tags: HashMap<String, String>,
    /// Heartbeat interval handed out in BootNotification answers, seconds.
    pub heartbeat_interval: u32,
}

impl Policy {
    /// The status of an id tag under this policy. `known` is what the
    /// gateway learnt from the cloud (local list, then cache); the config's
    /// own list comes first.
    pub fn tag_status(&self, id_tag: &str, known: Option<String>) -> String {
        match (self.authorize, self.id_tags.get(id_tag).cloned().or(known)) {
            (AuthPolicy::AcceptAll, _) => "Accepted".into(),
            (_, Some(status)) => status,
            (AuthPolicy::LocalList, None) => "Accepted".into(),
            (AuthPolicy::RejectUnknown, None) => "Invalid".into(),
        }
    }
}

/// A CALLERROR the local controller answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalError {
    pub code: &'static str,
    pub description: String,
}

fn bad_payload(e: impl std::fmt::Display) -> LocalError {
    LocalError {
        code: "FormationViolation",
        description: e.to_string(),
    }
}

/// The requests the local controller answers (each checked against its
/// official schema first).
pub const ANSWERED: &[&str] = &[
    "Authorize",
    "BootNotification",
    "DataTransfer",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StartTransaction",
    "StatusNotification",
    "StopTransaction",
];

/// Answer one OCPP 1.6 CALL from a charger. `now` is RFC 3339;
/// `next_tx_id` is called only for StartTransaction.
pub fn answer(
    action: &str,
    payload: &RawValue,
    now: &str,
    policy: &Policy,
    known: &dyn Fn(&str) -> Option<String>,
    next_tx_id: &mut dyn FnMut() -> i64,
) -> Result<Value, LocalError> {
    let status = |tag: &str| policy.tag_status(tag, known(tag));
    if ANSWERED.contains(&action) {
        // As a CSMS must: a payload that breaks its schema gets the
        // OCPP-J error for what is wrong, not an answer.
        let value: Value = serde_json::from_str(payload.get()).map_err(bad_payload)?;
        super::schema::check(super::Protocol::Ocpp16, action, &value).map_err(|v| LocalError {
            code: v.code,
            description: v.description,
        })?;
    }
    match action {
        "BootNotification" => {
            decode::<messages::BootNotification>(payload).map_err(bad_payload)?;
            Ok(
                json!({"status": "Accepted", "currentTime": now, "interval": policy.heartbeat_interval}),
            )
        }
        "Heartbeat" => Ok(json!({ "currentTime": now })),
        "StatusNotification" => {
            let s: messages::StatusNotification = decode(payload).map_err(bad_payload)?;
            if messages::ChargePointStatus::parse(&s.status).is_none() {
                return Err(LocalError {
                    code: "PropertyConstraintViolation",
                    description: format!("unknown connector status {:?}", s.status),
                });
            }
            Ok(json!({}))
        }
        "Authorize" => {
            let a: messages::Authorize = decode(payload).map_err(bad_payload)?;
            Ok(json!({"idTagInfo": {"status": status(&a.id_tag)}}))
        }
        "StartTransaction" => {
            let s: messages::StartTransaction = decode(payload).map_err(bad_payload)?;
            let status = status(&s.id_tag);
            Ok(json!({"transactionId": next_tx_id(), "idTagInfo": {"status": status}}))
        }
        "StopTransaction" => {
            let s: messages::StopTransaction = decode(payload).map_err(bad_payload)?;
            Ok(match s.id_tag {
                Some(tag) => json!({"idTagInfo": {"status": status(&tag)}}),
                None => json!({}),
            })
        }
        "MeterValues" => {
            decode::<messages::MeterValues>(payload).map_err(bad_payload)?;
            Ok(json!({}))
        }
        "DataTransfer" => Ok(json!({"status": "UnknownVendorId"})),
        "DiagnosticsStatusNotification" | "FirmwareStatusNotification" => Ok(json!({})),
        "SecurityEventNotification"
        | "SignCertificate"
        | "LogStatusNotification"
        | "SignedFirmwareStatusNotification" => Err(LocalError {
            code: "NotSupported",
            description: format!("{action} is not supported while the gateway answers offline"),
        }),
        other => Err(LocalError {
            code: "NotImplemented",
            description: format!("unknown action {other}"),
        }),
    }
}

/// The OCPP 2.0.1 requests the local controller answers (each checked
/// against its official schema first).
pub const ANSWERED_201: &[&str] = &[
    "Authorize",
    "BootNotification",
    "DataTransfer",
    "FirmwareStatusNotification",
    "Heartbeat",
    "LogStatusNotification",
    "MeterValues",
    "NotifyEvent",
    "NotifyReport",
    "SecurityEventNotification",
    "StatusNotification",
    "TransactionEvent",
];

/// Answer one OCPP 2.0.1 CALL from a charger (`now` is RFC 3339). 2.0.1
/// transaction ids are the charger's own, so nothing is handed out; an
/// id token is answered by the same policy as a 1.6 id tag (its statuses
/// are 2.0.1 `AuthorizationStatusEnumType` values too).
pub fn answer_201(
    action: &str,
    payload: &RawValue,
    now: &str,
    policy: &Policy,
    known: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, LocalError> {
    use super::v201;
    let bad = |e: serde_json::Error| LocalError {
        code: "FormatViolation",
        description: e.to_string(),
    };
    if ANSWERED_201.contains(&action) {
        let value: Value = serde_json::from_str(payload.get()).map_err(bad)?;
        super::schema::check(super::Protocol::Ocpp201, action, &value).map_err(|v| LocalError {
            code: v.code,
            description: v.description,
        })?;
    }
    let token_info = |token: &str| json!({"status": policy.tag_status(token, known(token))});
    match action {
        "BootNotification" => Ok(
            json!({"currentTime": now, "interval": policy.heartbeat_interval, "status": "Accepted"}),
        ),
        "Heartbeat" => Ok(json!({ "currentTime": now })),
        "Authorize" => {
            let a: v201::Authorize = decode(payload).map_err(bad)?;
            Ok(json!({"idTokenInfo": token_info(&a.id_token.id_token)}))
        }
        "TransactionEvent" => {
            // idTokenInfo is required in the answer when the request has
            // an idToken, and only then.
            let t: v201::TransactionEvent = decode(payload).map_err(bad)?;
            Ok(match t.id_token {
                Some(i) => json!({"idTokenInfo": token_info(&i.id_token)}),
                None => json!({}),
            })
        }
        "DataTransfer" => Ok(json!({"status": "UnknownVendorId"})),
        "StatusNotification"
        | "MeterValues"
        | "NotifyEvent"
        | "NotifyReport"
        | "SecurityEventNotification"
        | "FirmwareStatusNotification"
        | "LogStatusNotification" => Ok(json!({})),
        "SignCertificate"
        | "Get15118EVCertificate"
        | "GetCertificateStatus"
        | "NotifyEVChargingNeeds"
        | "NotifyEVChargingSchedule"
        | "ReportChargingProfiles"
        | "NotifyChargingLimit"
        | "ClearedChargingLimit"
        | "ReservationStatusUpdate"
        | "NotifyCustomerInformation"
        | "NotifyDisplayMessages"
        | "NotifyMonitoringReport"
        | "PublishFirmwareStatusNotification" => Err(LocalError {
            code: "NotSupported",
            description: format!("{action} is not supported while the gateway answers offline"),
        }),
        other => Err(LocalError {
            code: "NotImplemented",
            description: format!("unknown action {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(authorize: AuthPolicy) -> Policy {
        let mut id_tags = HashMap::new();
        id_tags.insert("GOOD".to_string(), "Accepted".to_string());
        id_tags.insert("BLOCKED".to_string(), "Blocked".to_string());
        Policy {
            authorize,
            id_tags,
            heartbeat_interval: 300,
        }
    }

    fn run(action: &str, payload: &str, p: &Policy) -> Result<Value, LocalError> {
        let raw = RawValue::from_string(payload.to_string()).unwrap();
        let mut next = -1;
        let cloud_knows = |tag: &str| (tag == "CLOUDBLOCKED").then(|| "Blocked".to_string());
        answer(
            action,
            &raw,
            "2026-01-01T00:00:00Z",
            p,
            &cloud_knows,
            &mut || {
                next -= 1;
                next + 1
            },
        )
    }

    #[test]
    fn boot_and_heartbeat() {
        let p = policy(AuthPolicy::AcceptAll);
        let v = run(
            "BootNotification",
            r#"{"chargePointVendor":"V","chargePointModel":"M"}"#,
            &p,
        )
        .unwrap();
        assert_eq!(v["status"], "Accepted");
        assert_eq!(v["interval"], 300);
        assert_eq!(
            run("Heartbeat", "{}", &p).unwrap()["currentTime"],
            "2026-01-01T00:00:00Z"
        );
        // Required fields missing: OCPP-J's code for that, from the schema.
        assert_eq!(
            run("BootNotification", "{}", &p).unwrap_err().code,
            "OccurenceConstraintViolation"
        );
    }

    #[test]
    fn authorization_policies() {
        for (pol, unknown) in [
            (AuthPolicy::AcceptAll, "Accepted"),
            (AuthPolicy::LocalList, "Accepted"),
            (AuthPolicy::RejectUnknown, "Invalid"),
        ] {
            let p = policy(pol);
            let st = |tag: &str| {
                run("Authorize", &format!(r#"{{"idTag":"{tag}"}}"#), &p).unwrap()["idTagInfo"]
                    ["status"]
                    .clone()
            };
            assert_eq!(st("NOBODY"), unknown, "{pol:?}");
            assert_eq!(st("GOOD"), "Accepted");
            let blocked = if pol == AuthPolicy::AcceptAll {
                "Accepted"
            } else {
                "Blocked"
            };
            assert_eq!(st("BLOCKED"), blocked, "{pol:?}");
            assert_eq!(
                st("CLOUDBLOCKED"),
                blocked,
                "what the cloud said wins over the policy: {pol:?}"
            );
        }
    }

    #[test]
    fn start_transaction_gets_a_local_id() {
        let p = policy(AuthPolicy::RejectUnknown);
        let v = run(
            "StartTransaction",
            r#"{"connectorId":1,"idTag":"GOOD","meterStart":0,"timestamp":"2026-01-01T00:00:00Z"}"#,
            &p,
        )
        .unwrap();
        assert_eq!(v["transactionId"], -1);
        assert_eq!(v["idTagInfo"]["status"], "Accepted");
    }

    #[test]
    fn status_values_are_checked() {
        let p = policy(AuthPolicy::AcceptAll);
        assert!(run(
            "StatusNotification",
            r#"{"connectorId":1,"errorCode":"NoError","status":"SuspendedEVSE"}"#,
            &p
        )
        .is_ok());
        let e = run(
            "StatusNotification",
            r#"{"connectorId":1,"errorCode":"NoError","status":"Sleeping"}"#,
            &p,
        )
        .unwrap_err();
        assert_eq!(e.code, "PropertyConstraintViolation");
    }

    #[test]
    fn unknown_actions_and_data_transfer() {
        let p = policy(AuthPolicy::AcceptAll);
        assert_eq!(
            run("Frobnicate", "{}", &p).unwrap_err().code,
            "NotImplemented"
        );
        assert_eq!(
            run("DataTransfer", r#"{"vendorId":"x"}"#, &p).unwrap()["status"],
            "UnknownVendorId"
        );
        assert_eq!(
            run("SignCertificate", "{}", &p).unwrap_err().code,
            "NotSupported"
        );
    }

    fn run_201(action: &str, payload: &str, p: &Policy) -> Result<Value, LocalError> {
        let raw = RawValue::from_string(payload.to_string()).unwrap();
        let cloud_knows = |tag: &str| (tag == "CLOUDBLOCKED").then(|| "Blocked".to_string());
        answer_201(action, &raw, "2026-01-01T00:00:00Z", p, &cloud_knows)
    }

    #[test]
    fn a_201_charger_is_answered_in_201() {
        let p = policy(AuthPolicy::RejectUnknown);
        let boot = run_201(
            "BootNotification",
            r#"{"reason":"PowerUp","chargingStation":{"model":"M","vendorName":"V"}}"#,
            &p,
        )
        .unwrap();
        assert_eq!(
            boot,
            json!({"currentTime": "2026-01-01T00:00:00Z", "interval": 300, "status": "Accepted"})
        );
        let auth = |tag: &str| {
            let req = format!(r#"{{"idToken":{{"idToken":"{tag}","type":"ISO14443"}}}}"#);
            run_201("Authorize", &req, &p).unwrap()["idTokenInfo"]["status"].clone()
        };
        assert_eq!(auth("GOOD"), "Accepted");
        assert_eq!(auth("NOBODY"), "Invalid");
        assert_eq!(auth("CLOUDBLOCKED"), "Blocked");
        let started = r#"{"eventType":"Started","timestamp":"2026-01-01T00:00:00Z","triggerReason":"Authorized","seqNo":0,
            "transactionInfo":{"transactionId":"t1"},"idToken":{"idToken":"GOOD","type":"ISO14443"},"evse":{"id":1,"connectorId":1}}"#;
        assert_eq!(
            run_201("TransactionEvent", started, &p).unwrap(),
            json!({"idTokenInfo": {"status": "Accepted"}})
        );
        let updated = r#"{"eventType":"Updated","timestamp":"2026-01-01T00:00:00Z","triggerReason":"MeterValuePeriodic","seqNo":1,
            "transactionInfo":{"transactionId":"t1"}}"#;
        assert_eq!(
            run_201("TransactionEvent", updated, &p).unwrap(),
            json!({}),
            "no idToken, no idTokenInfo"
        );
        let status = r#"{"timestamp":"2026-01-01T00:00:00Z","connectorStatus":"Occupied","evseId":1,"connectorId":1}"#;
        assert_eq!(
            run_201("StatusNotification", status, &p).unwrap(),
            json!({})
        );
    }

    #[test]
    fn a_201_payload_that_breaks_its_schema_gets_the_201_code() {
        let p = policy(AuthPolicy::AcceptAll);
        assert_eq!(
            run_201("BootNotification", "{}", &p).unwrap_err().code,
            "OccurrenceConstraintViolation"
        );
        assert_eq!(
            run_201("Heartbeat", "[1]", &p).unwrap_err().code,
            "TypeConstraintViolation"
        );
        assert_eq!(
            run_201("Frobnicate", "{}", &p).unwrap_err().code,
            "NotImplemented"
        );
        assert_eq!(
            run_201("SignCertificate", r#"{"csr":"x"}"#, &p)
                .unwrap_err()
                .code,
            "NotSupported"
        );
    }
}
