//! The OCPP 2.0.1 payloads the gateway reads to journal what a 2.0.1
//! charger does: BootNotification, StatusNotification, Authorize,
//! TransactionEvent and MeterValues. Pure.
//!
//! As for 1.6, only the fields the journal needs are typed; everything
//! else is relayed untouched.

use serde::Deserialize;

use super::messages::{MeterSummary, Sample};

/// `BootNotificationRequest`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootNotification {
    pub charging_station: ChargingStation,
}

/// `ChargingStationType`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingStation {
    pub model: String,
    pub vendor_name: String,
    #[serde(default)]
    pub firmware_version: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
}

/// `StatusNotificationRequest`: the status of one connector of one EVSE.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusNotification {
    pub connector_status: String,
    pub evse_id: u32,
    pub connector_id: u32,
}

/// `IdTokenType`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdToken {
    pub id_token: String,
}

/// `AuthorizeRequest`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorize {
    pub id_token: IdToken,
}

/// `EVSEType`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evse {
    pub id: u32,
}

/// `TransactionType`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionInfo {
    pub transaction_id: String,
    #[serde(default)]
    pub charging_state: Option<String>,
    #[serde(default)]
    pub stopped_reason: Option<String>,
}

/// `TransactionEventRequest`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionEvent {
    /// Started, Updated or Ended.
    pub event_type: String,
    pub timestamp: String,
    pub trigger_reason: String,
    pub seq_no: i64,
    pub transaction_info: TransactionInfo,
    #[serde(default)]
    pub meter_value: Vec<MeterValue>,
    #[serde(default)]
    pub offline: bool,
    #[serde(default)]
    pub evse: Option<Evse>,
    #[serde(default)]
    pub id_token: Option<IdToken>,
}

/// `MeterValuesRequest`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterValues {
    pub evse_id: u32,
    pub meter_value: Vec<MeterValue>,
}

/// `MeterValueType`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterValue {
    #[serde(default)]
    pub timestamp: Option<String>,
    pub sampled_value: Vec<SampledValue>,
}

/// The timestamps of meter values, to compare with the gateway's clock.
pub fn stamps(values: &[MeterValue]) -> impl Iterator<Item = &str> {
    values.iter().filter_map(|v| v.timestamp.as_deref())
}

/// `SampledValueType`: in 2.0.1 the value is a number, and the unit comes
/// with a power-of-ten multiplier.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SampledValue {
    pub value: f64,
    #[serde(default)]
    pub measurand: Option<String>,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub unit_of_measure: Option<UnitOfMeasure>,
}

/// `UnitOfMeasureType`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitOfMeasure {
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub multiplier: i32,
}

/// Energy register (Wh), active power (W) and the highest phase current
/// (A), from the last sample that carries each, as for 1.6.
pub fn summary(values: &[MeterValue]) -> MeterSummary {
    let mut s = MeterSummary::default();
    for mv in values {
        s.add(mv.sampled_value.iter().map(|sv| {
            let (unit, multiplier) = sv
                .unit_of_measure
                .as_ref()
                .map_or((None, 0), |u| (u.unit.as_deref(), u.multiplier));
            let kilo = unit.is_some_and(|u| u.starts_with('k'));
            // Multipliers beyond ±9 are nonsense from a meter; ignored.
            let scale = 10f64.powi(multiplier.clamp(-9, 9)) * if kilo { 1000.0 } else { 1.0 };
            let v = sv.value * scale;
            Sample {
                measurand: sv.measurand.as_deref(),
                phase: sv.phase.as_deref(),
                value: v,
                current: v,
            }
        }));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_values_with_units_and_multipliers() {
        let tx: TransactionEvent = serde_json::from_str(
            r#"{"eventType":"Updated","timestamp":"2030-01-01T00:00:00Z","triggerReason":"MeterValuePeriodic",
            "seqNo":3,"transactionInfo":{"transactionId":"abc","chargingState":"Charging"},
            "meterValue":[{"timestamp":"2030-01-01T00:00:00Z","sampledValue":[
              {"value":1.5,"measurand":"Energy.Active.Import.Register","unitOfMeasure":{"unit":"kWh"}},
              {"value":7.2,"measurand":"Power.Active.Import","unitOfMeasure":{"unit":"W","multiplier":3}},
              {"value":15.0,"measurand":"Current.Import","phase":"L1"},
              {"value":16.0,"measurand":"Current.Import","phase":"L2"},
              {"value":40.0,"measurand":"Current.Import","phase":"N"}]}]}"#,
        )
        .unwrap();
        let s = summary(&tx.meter_value);
        assert_eq!(s.energy_wh, Some(1500.0));
        assert_eq!(s.power_w, Some(7200.0));
        assert_eq!(s.current_a, Some(16.0), "highest phase, not the neutral");
        assert_eq!(
            tx.transaction_info.charging_state.as_deref(),
            Some("Charging")
        );
    }
}
