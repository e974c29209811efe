//! The OCPP 1.6 payloads the gateway reads: charger requests it journals or
//! answers itself, and the parts of the cloud's answers it remembers. Pure.
//!
//! Only the fields the gateway needs are typed; everything else is relayed
//! untouched, so a vendor extension never breaks the proxy.

use serde::Deserialize;
use serde_json::value::RawValue;

/// `BootNotification.req`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootNotification {
    pub charge_point_vendor: String,
    pub charge_point_model: String,
    #[serde(default)]
    pub charge_point_serial_number: Option<String>,
    #[serde(default)]
    pub firmware_version: Option<String>,
}

/// `StatusNotification.req`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusNotification {
    pub connector_id: u32,
    pub error_code: String,
    pub status: String,
    #[serde(default)]
    pub info: Option<String>,
    #[serde(default)]
    pub vendor_error_code: Option<String>,
}

/// A connector status (OCPP 1.6 §7.7 ChargePointStatus; 2.0.1's
/// connector statuses and charging states map onto the same words where
/// the journal writes them). The journal keeps the text a charger sent;
/// the gateway's decisions read it through this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargePointStatus {
    Available,
    Preparing,
    Charging,
    SuspendedEVSE,
    SuspendedEV,
    Finishing,
    Reserved,
    Unavailable,
    Faulted,
}

impl ChargePointStatus {
    /// Every 1.6 status, in the spec's order.
    pub const ALL: [ChargePointStatus; 9] = [
        ChargePointStatus::Available,
        ChargePointStatus::Preparing,
        ChargePointStatus::Charging,
        ChargePointStatus::SuspendedEVSE,
        ChargePointStatus::SuspendedEV,
        ChargePointStatus::Finishing,
        ChargePointStatus::Reserved,
        ChargePointStatus::Unavailable,
        ChargePointStatus::Faulted,
    ];

    /// The status a text names, if it is one of OCPP 1.6's.
    pub fn parse(s: &str) -> Option<ChargePointStatus> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Its name in OCPP.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChargePointStatus::Available => "Available",
            ChargePointStatus::Preparing => "Preparing",
            ChargePointStatus::Charging => "Charging",
            ChargePointStatus::SuspendedEVSE => "SuspendedEVSE",
            ChargePointStatus::SuspendedEV => "SuspendedEV",
            ChargePointStatus::Finishing => "Finishing",
            ChargePointStatus::Reserved => "Reserved",
            ChargePointStatus::Unavailable => "Unavailable",
            ChargePointStatus::Faulted => "Faulted",
        }
    }
}

/// The connector statuses of OCPP 1.6 §7.7, as text.
pub const STATUSES: [&str; 9] = {
    let mut out = [""; 9];
    let mut i = 0;
    while i < 9 {
        out[i] = ChargePointStatus::ALL[i].as_str();
        i += 1;
    }
    out
};

/// `Authorize.req`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorize {
    pub id_tag: String,
}

/// `StartTransaction.req`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartTransaction {
    pub connector_id: u32,
    pub id_tag: String,
    pub meter_start: i64,
    pub timestamp: String,
}

/// `StopTransaction.req`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopTransaction {
    pub transaction_id: i64,
    pub meter_stop: i64,
    pub timestamp: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub id_tag: Option<String>,
}

/// `MeterValues.req`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterValues {
    pub connector_id: u32,
    #[serde(default)]
    pub transaction_id: Option<i64>,
    pub meter_value: Vec<MeterValue>,
}

/// One timestamped set of sampled values.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterValue {
    pub timestamp: String,
    pub sampled_value: Vec<SampledValue>,
}

/// One sampled value; 1.6 sends numbers as strings.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SampledValue {
    pub value: String,
    #[serde(default)]
    pub measurand: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub phase: Option<String>,
}

/// What the gateway keeps of a MeterValues message: the latest reading of
/// each quantity it shows.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MeterSummary {
    pub energy_wh: Option<f64>,
    pub power_w: Option<f64>,
    pub current_a: Option<f64>,
}

/// One sampled value as the summary reads it, in either OCPP version.
pub struct Sample<'a> {
    pub measurand: Option<&'a str>,
    pub phase: Option<&'a str>,
    /// In Wh, W or A (kilo units and multipliers applied).
    pub value: f64,
    /// What a current sample counts as (1.6 takes its value as sent).
    pub current: f64,
}

impl MeterSummary {
    /// Fold in one meter value's samples: the energy register and active
    /// power of the last sample carrying each, and the highest phase
    /// current (the neutral is not a phase).
    pub fn add<'a>(&mut self, samples: impl Iterator<Item = Sample<'a>>) {
        let mut current: Option<f64> = None;
        for s in samples.filter(|s| s.value.is_finite()) {
            match s.measurand.unwrap_or("Energy.Active.Import.Register") {
                "Energy.Active.Import.Register" => self.energy_wh = Some(s.value),
                "Power.Active.Import" => self.power_w = Some(s.value),
                "Current.Import" if s.phase != Some("N") => {
                    current = Some(current.map_or(s.current, |c: f64| c.max(s.current)))
                }
                _ => {}
            }
        }
        if current.is_some() {
            self.current_a = current;
        }
    }
}

impl MeterValues {
    /// Reduce to energy register (Wh), active power (W) and the highest phase
    /// current (A), from the last sample that carries each.
    pub fn summary(&self) -> MeterSummary {
        let mut s = MeterSummary::default();
        for mv in &self.meter_value {
            s.add(mv.sampled_value.iter().filter_map(|sv| {
                let v = sv.value.trim().parse::<f64>().ok()?;
                let kilo = sv.unit.as_deref().is_some_and(|u| u.starts_with('k'));
                Some(Sample {
                    measurand: sv.measurand.as_deref(),
                    phase: sv.phase.as_deref(),
                    value: if kilo { v * 1000.0 } else { v },
                    current: v,
                })
            }));
        }
        s
    }
}

/// `IdTagInfo`, found in the answers to Authorize, StartTransaction and
/// StopTransaction.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdTagInfo {
    pub status: String,
}

/// The parts of the cloud's answers the gateway reads.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnswerFields {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub transaction_id: Option<i64>,
    #[serde(default)]
    pub id_tag_info: Option<IdTagInfo>,
    /// OCPP 2.0.1's `idTokenInfo` (Authorize, TransactionEvent).
    #[serde(default)]
    pub id_token_info: Option<IdTagInfo>,
    #[serde(default)]
    pub interval: Option<i64>,
}

impl AnswerFields {
    /// Read an answer payload; an answer the gateway cannot read still
    /// relays, it just journals no fields.
    pub fn read(payload: &RawValue) -> AnswerFields {
        serde_json::from_str(payload.get()).unwrap_or_default()
    }

    /// The status a person reads: the top-level one, else the id tag's.
    pub fn status(&self) -> Option<String> {
        self.status
            .clone()
            .or_else(|| self.id_tag_info.as_ref().map(|i| i.status.clone()))
            .or_else(|| self.id_token_info.as_ref().map(|i| i.status.clone()))
    }
}

/// Decode a request payload; serde's error names what does not fit, and
/// where.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a RawValue) -> Result<T, serde_json::Error> {
    serde_json::from_str(payload.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn connector_statuses_are_the_specs_nine() {
        for st in ChargePointStatus::ALL {
            assert_eq!(ChargePointStatus::parse(st.as_str()), Some(st));
        }
        assert_eq!(STATUSES[3], "SuspendedEVSE");
        assert_eq!(ChargePointStatus::parse("Sleeping"), None);
        assert_eq!(
            ChargePointStatus::parse("charging"),
            None,
            "names are case-sensitive"
        );
    }

    #[test]
    fn meter_summary_reads_energy_power_and_current() {
        let p = raw(
            r#"{"connectorId":1,"transactionId":5,"meterValue":[{"timestamp":"2026-01-01T00:00:00Z","sampledValue":[
            {"value":"12.5","measurand":"Energy.Active.Import.Register","unit":"kWh"},
            {"value":"7200","measurand":"Power.Active.Import","unit":"W"},
            {"value":"15.5","measurand":"Current.Import","phase":"L1"},
            {"value":"16.0","measurand":"Current.Import","phase":"L2"},
            {"value":"99","measurand":"Current.Import","phase":"N"}]}]}"#,
        );
        let mv: MeterValues = decode(&p).unwrap();
        let s = mv.summary();
        assert_eq!(s.energy_wh, Some(12500.0));
        assert_eq!(s.power_w, Some(7200.0));
        assert_eq!(s.current_a, Some(16.0));
    }

    #[test]
    fn default_measurand_is_the_energy_register() {
        let p = raw(
            r#"{"connectorId":1,"meterValue":[{"timestamp":"t","sampledValue":[{"value":"100"}]}]}"#,
        );
        let mv: MeterValues = decode(&p).unwrap();
        assert_eq!(mv.summary().energy_wh, Some(100.0));
    }

    #[test]
    fn unreadable_values_are_skipped_not_fatal() {
        let p = raw(
            r#"{"connectorId":1,"meterValue":[{"timestamp":"t","sampledValue":[{"value":"NaN"},{"value":"x"}]}]}"#,
        );
        let mv: MeterValues = decode(&p).unwrap();
        assert_eq!(mv.summary(), MeterSummary::default());
    }

    #[test]
    fn decode_names_the_problem() {
        let e = decode::<StartTransaction>(&raw(r#"{"connectorId":"one"}"#)).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = decode::<StartTransaction>(&raw(r#"{"connectorId":1}"#)).unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
    }

    #[test]
    fn answer_fields_read_status_from_id_tag_info() {
        let a = AnswerFields::read(&raw(
            r#"{"transactionId":42,"idTagInfo":{"status":"Blocked"}}"#,
        ));
        assert_eq!(a.transaction_id, Some(42));
        assert_eq!(a.status().as_deref(), Some("Blocked"));
        assert!(AnswerFields::read(&raw("{}")).status().is_none());
    }
}
