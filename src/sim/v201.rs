//! The simulator as an OCPP 2.0.1 charger (`sim --ocpp 2.0.1`): the
//! charger's behaviour stays the 1.6 one in `super`, and this adapter
//! restates what it sends in 2.0.1 (BootNotification, StatusNotification of
//! the EVSE, Authorize, TransactionEvent Started/Updated/Ended with seqNo,
//! MeterValues) and what it is asked in 1.6 (Reset, RequestStart/Stop,
//! SetChargingProfile, …). Pure.

use std::collections::HashMap;

use serde_json::{json, Value};

/// What a 2.0.1 call from the gateway becomes.
pub enum Incoming {
    /// Handled by the 1.6 logic as this call; its answer restated by
    /// [`Adapter::answer_out`].
    As(&'static str, Value),
    /// Answered here.
    Answer(Value),
    /// Not something the simulator does.
    NotImplemented,
}

/// The 2.0.1 side of one simulated charger.
#[derive(Default)]
pub struct Adapter {
    seq_no: i64,
    next_tx: i64,
    /// The 1.6 transaction id the logic knows → the 2.0.1 string id.
    tx_ids: HashMap<i64, String>,
    running: Option<i64>,
    charger: String,
}

/// A 1.6 sampled value list restated: numbers, units with multipliers.
fn meter_values(mv: &Value) -> Value {
    let list: Vec<Value> = mv
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let sampled: Vec<Value> = m["sampledValue"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let mut v = json!({
                        "value": s["value"].as_str().and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0),
                        "measurand": s["measurand"].as_str().unwrap_or("Energy.Active.Import.Register"),
                    });
                    if let Some(u) = s["unit"].as_str() {
                        v["unitOfMeasure"] = json!({"unit": u});
                    }
                    v
                })
                .collect();
            json!({"timestamp": m["timestamp"], "sampledValue": sampled})
        })
        .collect();
    Value::Array(list)
}

fn energy(wh: &Value, timestamp: &Value) -> Value {
    json!([{"timestamp": timestamp, "sampledValue": [{"value": wh.as_f64().unwrap_or(0.0), "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}}]}])
}

impl Adapter {
    pub fn new(charger: &str) -> Adapter {
        Adapter {
            charger: charger.to_string(),
            ..Default::default()
        }
    }

    fn seq(&mut self) -> i64 {
        let s = self.seq_no;
        self.seq_no += 1;
        s
    }

    fn tx_event(
        &mut self,
        kind: &str,
        trigger: &str,
        tx: i64,
        timestamp: &Value,
        extra: Value,
    ) -> (String, Value) {
        let id = self
            .tx_ids
            .entry(tx)
            .or_insert_with(|| format!("{}-tx-{tx}", self.charger))
            .clone();
        let mut p = json!({
            "eventType": kind,
            "timestamp": timestamp,
            "triggerReason": trigger,
            "seqNo": self.seq(),
            "transactionInfo": {"transactionId": id},
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            if k == "chargingState" || k == "stoppedReason" {
                p["transactionInfo"][k] = v.clone();
            } else {
                p[k] = v.clone();
            }
        }
        ("TransactionEvent".into(), p)
    }

    /// A call the 1.6 logic queued, as the 2.0.1 calls a charger sends
    /// (the first one's answer goes back to the logic).
    pub fn outgoing(&mut self, action: &str, p: &Value) -> Vec<(String, Value)> {
        let now = p
            .get("timestamp")
            .cloned()
            .unwrap_or_else(|| json!(crate::clock::now_rfc3339()));
        match action {
            "BootNotification" => vec![(action.into(), boot_201(p))],
            "Authorize" => vec![(
                action.into(),
                json!({"idToken": {"idToken": p["idTag"], "type": "ISO14443"}}),
            )],
            "StatusNotification" => vec![self.status_201(p, &now)],
            "StartTransaction" => {
                self.next_tx += 1;
                let tx = self.next_tx;
                self.running = Some(tx);
                let evse = p["connectorId"].as_u64().unwrap_or(1);
                let extra = json!({
                    "chargingState": "Charging",
                    "evse": {"id": evse, "connectorId": 1},
                    "idToken": {"idToken": p["idTag"], "type": "ISO14443"},
                    "meterValue": energy(&p["meterStart"], &now),
                });
                vec![self.tx_event("Started", "Authorized", tx, &now, extra)]
            }
            "MeterValues" => match p["transactionId"].as_i64() {
                Some(tx) => {
                    let extra = json!({"meterValue": meter_values(&p["meterValue"])});
                    vec![self.tx_event("Updated", "MeterValuePeriodic", tx, &now, extra)]
                }
                None => vec![(
                    action.into(),
                    json!({"evseId": p["connectorId"].as_u64().unwrap_or(1), "meterValue": meter_values(&p["meterValue"])}),
                )],
            },
            "StopTransaction" => {
                let tx = p["transactionId"].as_i64().unwrap_or(0);
                self.running = None;
                let (trigger, reason) = match p["reason"].as_str() {
                    Some("Remote") => ("RemoteStop", "Remote"),
                    Some("HardReset" | "SoftReset") => ("ResetCommand", "ImmediateReset"),
                    Some("DeAuthorized") => ("Deauthorized", "DeAuthorized"),
                    _ => ("StopAuthorized", "Local"),
                };
                let extra = json!({
                    "stoppedReason": reason,
                    "chargingState": "EVConnected",
                    "meterValue": energy(&p["meterStop"], &now),
                });
                let ended = self.tx_event("Ended", trigger, tx, &now, extra);
                self.tx_ids.remove(&tx);
                vec![ended]
            }
            other => vec![(other.to_string(), p.clone())],
        }
    }

    /// A 1.6 StatusNotification restated: a charging state change of the
    /// running transaction, or the EVSE connector's status.
    fn status_201(&mut self, p: &Value, now: &Value) -> (String, Value) {
        let status = p["status"].as_str().unwrap_or("Available");
        let evse = p["connectorId"].as_u64().unwrap_or(1);
        match (status, self.running) {
            ("Charging" | "SuspendedEV" | "SuspendedEVSE", Some(tx)) => self.tx_event(
                "Updated",
                "ChargingStateChanged",
                tx,
                now,
                json!({"chargingState": status}),
            ),
            _ => {
                let connector_status = match status {
                    "Available" => "Available",
                    "Faulted" => "Faulted",
                    "Unavailable" => "Unavailable",
                    "Reserved" => "Reserved",
                    _ => "Occupied",
                };
                (
                    "StatusNotification".into(),
                    json!({"timestamp": now, "connectorStatus": connector_status, "evseId": evse, "connectorId": 1}),
                )
            }
        }
    }

    /// The 2.0.1 answer to a call, as the 1.6 logic reads its answer.
    pub fn answer_in(&self, action: &str, a: &Value) -> Value {
        match action {
            "StartTransaction" => {
                let status = a["idTokenInfo"]["status"].as_str().unwrap_or("Accepted");
                json!({"transactionId": self.next_tx, "idTagInfo": {"status": status}})
            }
            "Authorize" => json!({"idTagInfo": {"status": a["idTokenInfo"]["status"]}}),
            _ => a.clone(),
        }
    }

    /// A 2.0.1 call from the gateway, as the 1.6 logic takes it.
    pub fn call_in(&self, action: &str, r: &Value, config: &[(String, String)]) -> Incoming {
        match action {
            "Reset" => Incoming::As(
                "Reset",
                json!({"type": if r["type"] == "Immediate" { "Hard" } else { "Soft" }}),
            ),
            "RequestStartTransaction" => Incoming::As(
                "RemoteStartTransaction",
                json!({"connectorId": r["evseId"].as_u64().unwrap_or(1), "idTag": r["idToken"]["idToken"]}),
            ),
            "RequestStopTransaction" => {
                let tx = self
                    .tx_ids
                    .iter()
                    .find(|(_, s)| r["transactionId"].as_str() == Some(s.as_str()))
                    .map(|(t, _)| *t);
                match tx {
                    Some(t) => Incoming::As("RemoteStopTransaction", json!({"transactionId": t})),
                    None => Incoming::Answer(json!({"status": "Rejected"})),
                }
            }
            "TriggerMessage" => Incoming::As(
                "TriggerMessage",
                json!({"requestedMessage": r["requestedMessage"]}),
            ),
            "UnlockConnector" => {
                Incoming::As("UnlockConnector", json!({"connectorId": r["evseId"]}))
            }
            "ChangeAvailability" => Incoming::As(
                "ChangeAvailability",
                json!({"connectorId": r["evse"]["id"].as_u64().unwrap_or(0), "type": r["operationalStatus"]}),
            ),
            "SetChargingProfile" => set_charging_profile_16(r),
            "ClearChargingProfile" => {
                let mut p = json!({});
                if let Some(id) = r.get("chargingProfileId") {
                    p["id"] = id.clone();
                }
                Incoming::As("ClearChargingProfile", p)
            }
            "GetVariables" => get_variables(r, config),
            "SetVariables" => {
                let results: Vec<Value> = r["setVariableData"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| json!({"attributeStatus": "Accepted", "component": d["component"], "variable": d["variable"]}))
                    .collect();
                Incoming::Answer(json!({"setVariableResult": results}))
            }
            _ => Incoming::NotImplemented,
        }
    }

    /// The 1.6 logic's answer, restated for the 2.0.1 call.
    pub fn answer_out(&self, action201: &str, a: &Value) -> Value {
        match action201 {
            "UnlockConnector" => {
                json!({"status": if a["status"] == "Unlocked" { "Unlocked" } else { "UnlockFailed" }})
            }
            "ClearChargingProfile" => {
                json!({"status": if a["status"] == "Accepted" { "Accepted" } else { "Unknown" }})
            }
            "TriggerMessage" => {
                json!({"status": if a["status"] == "Accepted" { "Accepted" } else { "NotImplemented" }})
            }
            _ => json!({"status": a["status"]}),
        }
    }
}

/// A 2.0.1 SetChargingProfile restated as the 1.6 call the simulator's
/// logic follows.
fn set_charging_profile_16(r: &Value) -> Incoming {
    let cp = &r["chargingProfile"];
    let purpose = match cp["chargingProfilePurpose"].as_str() {
        Some("ChargingStationMaxProfile") => "ChargePointMaxProfile",
        Some(other) => other,
        None => "",
    };
    let mut p = json!({
        "chargingProfileId": cp["id"],
        "stackLevel": cp["stackLevel"],
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": cp["chargingProfileKind"],
        "chargingSchedule": cp["chargingSchedule"][0],
    });
    for k in ["recurrencyKind", "validFrom", "validTo"] {
        if let Some(v) = cp.get(k) {
            p[k] = v.clone();
        }
    }
    Incoming::As(
        "SetChargingProfile",
        json!({"connectorId": r["evseId"], "csChargingProfiles": p}),
    )
}

/// GetVariables answered from the simulator's 1.6 configuration keys.
fn get_variables(r: &Value, config: &[(String, String)]) -> Incoming {
    let value = |c: &str, v: &str| -> Option<String> {
        let key = match (c, v) {
            ("OCPPCommCtrlr", "HeartbeatInterval") => "HeartbeatInterval",
            ("SampledDataCtrlr", "TxUpdatedInterval") => "MeterValueSampleInterval",
            ("SampledDataCtrlr", "TxUpdatedMeasurands") => "MeterValuesSampledData",
            ("LocalAuthListCtrlr", "Enabled") => "LocalAuthListEnabled",
            ("AuthCtrlr", "AuthorizeRemoteStart") => "AuthorizeRemoteTxRequests",
            ("SmartChargingCtrlr", "Enabled") => {
                let profiles = config
                    .iter()
                    .find(|(k, _)| k == "SupportedFeatureProfiles")?;
                return Some(profiles.1.contains("SmartCharging").to_string());
            }
            ("ClockCtrlr", "DateTime") => return Some(crate::clock::now_rfc3339()),
            _ => return None,
        };
        config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let results: Vec<Value> = r["getVariableData"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let (c, v) = (
                d["component"]["name"].as_str().unwrap_or(""),
                d["variable"]["name"].as_str().unwrap_or(""),
            );
            let mut out = json!({"component": d["component"], "variable": d["variable"]});
            match value(c, v) {
                Some(x) => {
                    out["attributeStatus"] = "Accepted".into();
                    out["attributeValue"] = x.into();
                }
                None => out["attributeStatus"] = "UnknownVariable".into(),
            }
            out
        })
        .collect();
    Incoming::Answer(json!({"getVariableResult": results}))
}

/// A 1.6 BootNotification restated as 2.0.1's.
fn boot_201(p: &Value) -> Value {
    let mut station = json!({
        "vendorName": p["chargePointVendor"],
        "model": p["chargePointModel"],
    });
    for (from, to) in [
        ("firmwareVersion", "firmwareVersion"),
        ("chargePointSerialNumber", "serialNumber"),
    ] {
        if let Some(v) = p.get(from) {
            station[to] = v.clone();
        }
    }
    json!({"reason": "PowerUp", "chargingStation": station})
}
