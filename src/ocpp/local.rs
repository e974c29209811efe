//! The gateway as a local controller: the answers it gives a charger when no
//! cloud is configured or the cloud link is down, so chargers keep charging.
//! Pure: the caller supplies the clock, the policy and transaction ids.

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
#[derive(Debug, Clone)]
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
        super::schema::check(action, &value).map_err(|v| LocalError {
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
            if !messages::STATUSES.contains(&s.status.as_str()) {
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
}
