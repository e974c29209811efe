//! The remote actions staff run on a charger (the operator's "Remote
//! actions" menu), defined once for the API, the CLI, the web page and
//! MQTT: each becomes one OCPP call, in 1.6 or 2.0.1 as the charger speaks.
//! Pure: request and live state in, the call (or a clear refusal) out.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::state::ChargerState;

/// Parameters an action may take; which are used depends on the action.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActionRequest {
    #[serde(default)]
    pub connector: Option<u32>,
    #[serde(default)]
    pub id_tag: Option<String>,
    /// Reboot: a hard reset instead of a soft one.
    #[serde(default)]
    pub hard: bool,
    /// Configuration key (get-config, change-config).
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    /// Trigger: the message to trigger (StatusNotification, Heartbeat, MeterValues, BootNotification).
    #[serde(default)]
    pub message: Option<String>,
    /// Limit: the current cap in amperes.
    #[serde(default)]
    pub amps: Option<f64>,
    /// Pause, limit: until when (RFC 3339, or a span from now like "90m",
    /// "2h"); none: until resumed.
    #[serde(default)]
    pub until: Option<String>,
}

/// The action names, as the API paths and the CLI take them.
pub const NAMES: &[&str] = &[
    "reboot",
    "start",
    "stop",
    "force-stop",
    "check",
    "diagnostics",
    "unlock",
    "enable",
    "disable",
    "trigger",
    "get-config",
    "change-config",
    "pause",
    "resume",
    "limit",
];

/// Actions the gateway keeps itself (smart charging overrides): journaled,
/// not sent as one call; the smart-charging engine turns them into
/// charging profiles.
pub const LOCAL: &[&str] = &["pause", "resume", "limit"];

/// A pause, resume or cap as the journal keeps it: (mode, amperes, until).
pub fn to_override(
    name: &str,
    req: &ActionRequest,
    now: jiff::Timestamp,
) -> Result<(String, Option<f64>, Option<String>), Refusal> {
    let until = match req
        .until
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(u) => {
            let t = match u.parse::<jiff::Timestamp>() {
                Ok(t) => t,
                Err(_) => {
                    let span = parse_span(u).ok_or_else(|| {
                        Refusal::BadRequest(format!(
                            "until: expected an RFC 3339 time or a span like \"90m\" or \"2h\", found {u:?}"
                        ))
                    })?;
                    now + span
                }
            };
            if t <= now {
                return Err(Refusal::BadRequest(format!("until: {t} is in the past")));
            }
            // Whole seconds: people read it.
            Some(
                jiff::Timestamp::from_second(t.as_second())
                    .unwrap_or(t)
                    .to_string(),
            )
        }
    };
    match name {
        "pause" => Ok(("pause".into(), Some(0.0), until)),
        "resume" => Ok(("resume".into(), None, None)),
        "limit" => match req.amps {
            Some(a) if (0.0..=1000.0).contains(&a) => Ok(("cap".into(), Some(a), until)),
            _ => Err(Refusal::BadRequest(
                "limit: expected \"amps\", a current from 0 to 1000".into(),
            )),
        },
        other => Err(Refusal::UnknownAction(other.into())),
    }
}

/// "90m", "2h", "1d", "45s".
fn parse_span(s: &str) -> Option<jiff::SignedDuration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0 && *n <= 100_000)?;
    let secs = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(jiff::SignedDuration::from_secs(n * secs))
}

/// Why an action cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown action {0:?} (known: {list})", list = NAMES.join(", "))]
    UnknownAction(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no running transaction on connector {0}")]
    NoTransaction(u32),
}

/// Turn an action into the OCPP call that does it, in the version the
/// charger speaks.
pub fn to_call(
    name: &str,
    req: &ActionRequest,
    state: Option<&ChargerState>,
    default_id_tag: &str,
) -> Result<(&'static str, Value), Refusal> {
    if state.is_some_and(ChargerState::speaks_201) {
        return to_call_201(name, req, state, default_id_tag);
    }
    let connector = |default: u32| req.connector.unwrap_or(default);
    Ok(match name {
        "reboot" => (
            "Reset",
            json!({"type": if req.hard { "Hard" } else { "Soft" }}),
        ),
        "start" => {
            let tag = req.id_tag.as_deref().unwrap_or(default_id_tag);
            if tag.is_empty() || tag.len() > 20 {
                return Err(Refusal::BadRequest(
                    "id tag must be 1 to 20 characters".into(),
                ));
            }
            (
                "RemoteStartTransaction",
                json!({"connectorId": connector(1), "idTag": tag}),
            )
        }
        "stop" => {
            let c = connector(1);
            let tx = state
                .and_then(|s| s.transactions.get(&c))
                .and_then(|t| t.transaction_id)
                .ok_or(Refusal::NoTransaction(c))?;
            ("RemoteStopTransaction", json!({"transactionId": tx}))
        }
        "unlock" => ("UnlockConnector", json!({"connectorId": connector(1)})),
        "enable" | "disable" => {
            let kind = if name == "enable" {
                "Operative"
            } else {
                "Inoperative"
            };
            (
                "ChangeAvailability",
                json!({"connectorId": connector(0), "type": kind}),
            )
        }
        "trigger" => {
            let msg = triggerable(req, TRIGGERS_16)?;
            let mut p = json!({"requestedMessage": msg});
            if let Some(c) = req.connector {
                p["connectorId"] = c.into();
            }
            ("TriggerMessage", p)
        }
        "get-config" => match &req.key {
            Some(k) => ("GetConfiguration", json!({"key": [k]})),
            None => ("GetConfiguration", json!({})),
        },
        "change-config" => {
            let (Some(key), Some(value)) = (&req.key, &req.value) else {
                return Err(Refusal::BadRequest(
                    "change-config needs a key and a value".into(),
                ));
            };
            ("ChangeConfiguration", json!({"key": key, "value": value}))
        }
        other => return Err(Refusal::UnknownAction(other.to_string())),
    })
}

/// The messages a TriggerMessage may ask for, in 1.6 and in 2.0.1.
const TRIGGERS_16: &[&str] = &[
    "StatusNotification",
    "Heartbeat",
    "MeterValues",
    "BootNotification",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
];
const TRIGGERS_201: &[&str] = &[
    "StatusNotification",
    "Heartbeat",
    "MeterValues",
    "BootNotification",
    "TransactionEvent",
    "LogStatusNotification",
    "FirmwareStatusNotification",
];

/// The message a trigger asks for (StatusNotification when none is
/// named), if the version can trigger it.
fn triggerable<'r>(req: &'r ActionRequest, known: &[&str]) -> Result<&'r str, Refusal> {
    let msg = req.message.as_deref().unwrap_or("StatusNotification");
    if known.contains(&msg) {
        Ok(msg)
    } else {
        Err(Refusal::BadRequest(format!("cannot trigger {msg:?}")))
    }
}

/// A 2.0.1 component and variable from `Component.Variable` (or just
/// `Variable`, taken from the OCPP communication controller, where the
/// 1.6 keys people know best live in 2.0.1).
fn component_variable(key: &str) -> Result<Value, Refusal> {
    let (component, variable) = key.split_once('.').unwrap_or(("OCPPCommCtrlr", key));
    if component.is_empty() || variable.is_empty() || component.len() > 50 || variable.len() > 50 {
        return Err(Refusal::BadRequest(format!(
            "key: expected Component.Variable (each 1 to 50 characters), found {key:?}"
        )));
    }
    Ok(json!({"component": {"name": component}, "variable": {"name": variable}}))
}

/// The action as an OCPP 2.0.1 call: connectors are EVSEs.
fn to_call_201(
    name: &str,
    req: &ActionRequest,
    state: Option<&ChargerState>,
    default_id_tag: &str,
) -> Result<(&'static str, Value), Refusal> {
    let evse = |default: u32| req.connector.unwrap_or(default);
    Ok(match name {
        "reboot" => (
            "Reset",
            json!({"type": if req.hard { "Immediate" } else { "OnIdle" }}),
        ),
        "start" => start_201(req, default_id_tag)?,
        "stop" => {
            let c = evse(1);
            let tx = state
                .and_then(|s| s.transactions.get(&c))
                .and_then(|t| t.transaction_ref.clone())
                .ok_or(Refusal::NoTransaction(c))?;
            ("RequestStopTransaction", json!({"transactionId": tx}))
        }
        "unlock" => (
            "UnlockConnector",
            json!({"evseId": evse(1), "connectorId": 1}),
        ),
        "enable" | "disable" => {
            let status = if name == "enable" {
                "Operative"
            } else {
                "Inoperative"
            };
            let mut p = json!({"operationalStatus": status});
            if let Some(e) = req.connector.filter(|e| *e > 0) {
                p["evse"] = json!({"id": e});
            }
            ("ChangeAvailability", p)
        }
        "trigger" => {
            let msg = triggerable(req, TRIGGERS_201)?;
            let mut p = json!({"requestedMessage": msg});
            if let Some(c) = req.connector.filter(|c| *c > 0) {
                p["evse"] = json!({"id": c});
            }
            ("TriggerMessage", p)
        }
        "get-config" | "change-config" => variables_201(name, req)?,
        "diagnostics" => {
            return Err(Refusal::BadRequest(
                "diagnostics: not available for OCPP 2.0.1 chargers yet (GetLog)".into(),
            ))
        }
        other => return Err(Refusal::UnknownAction(other.to_string())),
    })
}

/// `start` for a 2.0.1 charger: RequestStartTransaction.
fn start_201(req: &ActionRequest, default_id_tag: &str) -> Result<(&'static str, Value), Refusal> {
    let evse = req.connector.unwrap_or(1);
    let tag = req.id_tag.as_deref().unwrap_or(default_id_tag);
    if tag.is_empty() || tag.len() > 36 {
        return Err(Refusal::BadRequest(
            "id token must be 1 to 36 characters".into(),
        ));
    }
    // remoteStartId lets the charger's TransactionEvent name this
    // request; seconds of the day are unique enough for staff.
    let remote_start_id = jiff::Timestamp::now().as_second().rem_euclid(86_400 * 365);
    Ok((
        "RequestStartTransaction",
        json!({"evseId": evse, "remoteStartId": remote_start_id,
               "idToken": {"idToken": tag, "type": "Central"}}),
    ))
}

/// `get-config` and `change-config` for a 2.0.1 charger: GetVariables,
/// SetVariables.
fn variables_201(name: &str, req: &ActionRequest) -> Result<(&'static str, Value), Refusal> {
    if name == "get-config" {
        let keys: Vec<&str> = match &req.key {
            Some(k) => vec![k.as_str()],
            // The basics, as "Run a check" reads them.
            None => BASICS_201.to_vec(),
        };
        let data = keys
            .into_iter()
            .map(component_variable)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(("GetVariables", json!({"getVariableData": data})));
    }
    let (Some(key), Some(value)) = (&req.key, &req.value) else {
        return Err(Refusal::BadRequest(
            "change-config needs a key and a value".into(),
        ));
    };
    let mut d = component_variable(key)?;
    d["attributeValue"] = value.as_str().into();
    Ok(("SetVariables", json!({"setVariableData": [d]})))
}

/// The 2.0.1 variables `get-config` reads when no key is named.
pub const BASICS_201: &[&str] = &[
    "OCPPCommCtrlr.HeartbeatInterval",
    "SampledDataCtrlr.TxUpdatedInterval",
    "SampledDataCtrlr.TxUpdatedMeasurands",
    "SmartChargingCtrlr.Enabled",
    "AuthCtrlr.AuthorizeRemoteStart",
    "ClockCtrlr.DateTime",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Transaction;

    #[test]
    fn actions_become_ocpp_calls() {
        let r = |name, req: ActionRequest| to_call(name, &req, None, "GATEWAY");
        assert_eq!(
            r("reboot", ActionRequest::default()).unwrap(),
            ("Reset", json!({"type": "Soft"}))
        );
        assert_eq!(
            r(
                "reboot",
                ActionRequest {
                    hard: true,
                    ..Default::default()
                }
            )
            .unwrap()
            .1["type"],
            "Hard"
        );
        assert_eq!(
            r("start", ActionRequest::default()).unwrap(),
            (
                "RemoteStartTransaction",
                json!({"connectorId": 1, "idTag": "GATEWAY"})
            )
        );
        assert_eq!(
            r("disable", ActionRequest::default()).unwrap().1,
            json!({"connectorId": 0, "type": "Inoperative"})
        );
        assert!(matches!(
            r("dance", ActionRequest::default()),
            Err(Refusal::UnknownAction(_))
        ));
        assert!(matches!(
            r(
                "change-config",
                ActionRequest {
                    key: Some("K".into()),
                    ..Default::default()
                }
            ),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            r(
                "trigger",
                ActionRequest {
                    message: Some("Reset".into()),
                    ..Default::default()
                }
            ),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn a_201_charger_gets_201_calls() {
        let mut s = ChargerState::default();
        s.charger_link.protocol = Some("ocpp2.0.1".into());
        let r = |name, req: ActionRequest, s: &ChargerState| to_call(name, &req, Some(s), "GW");
        assert_eq!(
            r("reboot", ActionRequest::default(), &s).unwrap(),
            ("Reset", json!({"type": "OnIdle"}))
        );
        let (action, p) = r("start", ActionRequest::default(), &s).unwrap();
        assert_eq!(action, "RequestStartTransaction");
        assert_eq!(p["idToken"], json!({"idToken": "GW", "type": "Central"}));
        assert_eq!(p["evseId"], 1);
        assert!(p["remoteStartId"].is_i64());
        assert_eq!(
            r("stop", ActionRequest::default(), &s),
            Err(Refusal::NoTransaction(1))
        );
        s.transactions.insert(
            1,
            Transaction {
                connector: 1,
                transaction_id: None,
                transaction_ref: Some("tx-uuid".into()),
                id_tag: "T".into(),
                meter_start: 0,
                started: "t".into(),
            },
        );
        assert_eq!(
            r("stop", ActionRequest::default(), &s).unwrap(),
            (
                "RequestStopTransaction",
                json!({"transactionId": "tx-uuid"})
            )
        );
        assert_eq!(
            r(
                "disable",
                ActionRequest {
                    connector: Some(2),
                    ..Default::default()
                },
                &s
            )
            .unwrap(),
            (
                "ChangeAvailability",
                json!({"operationalStatus": "Inoperative", "evse": {"id": 2}})
            )
        );
        let key = |k: &str| ActionRequest {
            key: Some(k.into()),
            value: Some("60".into()),
            ..Default::default()
        };
        assert_eq!(
            r(
                "change-config",
                key("SampledDataCtrlr.TxUpdatedInterval"),
                &s
            )
            .unwrap()
            .1,
            json!({"setVariableData": [{"component": {"name": "SampledDataCtrlr"},
                   "variable": {"name": "TxUpdatedInterval"}, "attributeValue": "60"}]})
        );
        assert_eq!(
            r("get-config", key("HeartbeatInterval"), &s).unwrap().1["getVariableData"][0]
                ["component"]["name"],
            "OCPPCommCtrlr"
        );
        assert_eq!(
            r("get-config", ActionRequest::default(), &s).unwrap().1["getVariableData"]
                .as_array()
                .unwrap()
                .len(),
            BASICS_201.len()
        );
        assert!(matches!(
            r("diagnostics", ActionRequest::default(), &s),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn stop_uses_the_running_transaction() {
        let mut s = ChargerState::default();
        assert_eq!(
            to_call("stop", &ActionRequest::default(), Some(&s), "X"),
            Err(Refusal::NoTransaction(1))
        );
        s.transactions.insert(
            2,
            Transaction {
                connector: 2,
                transaction_id: Some(-7),
                transaction_ref: None,
                id_tag: "T".into(),
                meter_start: 0,
                started: "t".into(),
            },
        );
        let req = ActionRequest {
            connector: Some(2),
            ..Default::default()
        };
        assert_eq!(
            to_call("stop", &req, Some(&s), "X").unwrap(),
            ("RemoteStopTransaction", json!({"transactionId": -7}))
        );
    }
}
