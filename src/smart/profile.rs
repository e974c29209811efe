//! Local limits as OCPP 1.6 charging profiles (`SetChargingProfile`), and
//! the reverse: what a set of profiles allows at an instant, as a charger
//! computes it (§3.13). The gateway uses the reverse to show what a charger
//! will do; the simulator uses it to behave like a charger. `to_201`
//! restates a 1.6 SetChargingProfile or ClearChargingProfile in OCPP 2.0.1
//! for chargers that speak it.

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

/// How a charger is told its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    Amps,
    Watts,
}

impl RateUnit {
    pub fn ocpp(self) -> &'static str {
        match self {
            RateUnit::Amps => "A",
            RateUnit::Watts => "W",
        }
    }
}

/// Where the gateway's profiles sit on a charger.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub id: i64,
    pub stack_level: u32,
    /// `ChargePointMaxProfile` (caps the cloud's profiles; the default) or
    /// `TxDefaultProfile`.
    pub purpose: String,
}

/// A charger's electrical side, for converting amperes to its unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Electrical {
    pub unit: RateUnit,
    pub phases: u8,
    pub voltage: f64,
}

impl Electrical {
    /// `amps` per phase in the charger's unit, rounded down to OCPP's 0.1.
    pub fn limit(&self, amps: f64) -> f64 {
        let v = match self.unit {
            RateUnit::Amps => amps,
            RateUnit::Watts => amps * self.voltage * self.phases as f64,
        };
        (v.max(0.0) * 10.0).floor() / 10.0
    }

    /// The reverse of `limit`: amperes per phase.
    pub fn amps(&self, limit: f64, unit: &str) -> f64 {
        if unit == "W" {
            limit / (self.voltage * self.phases.max(1) as f64)
        } else {
            limit
        }
    }
}

fn stamp(t: Timestamp) -> String {
    // Whole seconds: some chargers reject fractional timestamps.
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

fn periods(start: Timestamp, steps: &[(Timestamp, f64)], el: &Electrical) -> Vec<Value> {
    steps
        .iter()
        .map(|(t, amps)| {
            json!({
                "startPeriod": t.duration_since(start).as_secs().max(0),
                "limit": el.limit(*amps),
                "numberPhases": el.phases,
            })
        })
        .collect()
}

/// A weekly recurring profile: `steps` (amperes from each instant on) over
/// the week beginning at `week_start`. It lives in the charger and repeats
/// while the gateway is away; the gateway re-sends it every week so that a
/// DST change shifts it.
pub fn weekly(
    slot: &Slot,
    el: &Electrical,
    week_start: Timestamp,
    steps: &[(Timestamp, f64)],
) -> Value {
    json!({
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": slot.id,
            "stackLevel": slot.stack_level,
            "chargingProfilePurpose": slot.purpose,
            "chargingProfileKind": "Recurring",
            "recurrencyKind": "Weekly",
            "chargingSchedule": {
                "duration": super::schedule::WEEK.as_secs(),
                "startSchedule": stamp(week_start),
                "chargingRateUnit": el.unit.ocpp(),
                "chargingSchedulePeriod": periods(week_start, steps, el),
            }
        }
    })
}

/// An absolute profile from `start` (in the past, so it applies at once)
/// lasting `duration`; after it the charger falls back to the profile
/// beneath it.
pub fn absolute(
    slot: &Slot,
    el: &Electrical,
    start: Timestamp,
    duration: SignedDuration,
    steps: &[(Timestamp, f64)],
) -> Value {
    json!({
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": slot.id,
            "stackLevel": slot.stack_level,
            "chargingProfilePurpose": slot.purpose,
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "duration": duration.as_secs(),
                "startSchedule": stamp(start),
                "chargingRateUnit": el.unit.ocpp(),
                "chargingSchedulePeriod": periods(start, steps, el),
            }
        }
    })
}

/// A 1.6 `SetChargingProfile` or `ClearChargingProfile` payload (as the
/// engine builds them) restated in OCPP 2.0.1: the EVSE for the connector,
/// `ChargingStationMaxProfile` for `ChargePointMaxProfile`, the schedule as
/// a one-element list with its own id, and a clear by id. Returns the
/// action too.
pub fn to_201(payload: &Value) -> (&'static str, Value) {
    let Some(p) = payload.get("csChargingProfiles") else {
        // ClearChargingProfile: by id, or by purpose and stack level.
        let mut out = json!({});
        if let Some(id) = payload.get("id") {
            out["chargingProfileId"] = id.clone();
        }
        let mut criteria = serde_json::Map::new();
        if let Some(c) = payload.get("connectorId") {
            criteria.insert("evseId".into(), c.clone());
        }
        if let Some(purpose) = payload
            .get("chargingProfilePurpose")
            .and_then(Value::as_str)
        {
            criteria.insert("chargingProfilePurpose".into(), purpose_201(purpose).into());
        }
        if let Some(level) = payload.get("stackLevel") {
            criteria.insert("stackLevel".into(), level.clone());
        }
        if !criteria.is_empty() {
            out["chargingProfileCriteria"] = Value::Object(criteria);
        }
        return ("ClearChargingProfile", out);
    };
    let mut profile = serde_json::Map::new();
    let copy = |profile: &mut serde_json::Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = p.get(from) {
            profile.insert(to.into(), v.clone());
        }
    };
    copy(&mut profile, "chargingProfileId", "id");
    copy(&mut profile, "stackLevel", "stackLevel");
    copy(&mut profile, "chargingProfileKind", "chargingProfileKind");
    copy(&mut profile, "recurrencyKind", "recurrencyKind");
    copy(&mut profile, "validFrom", "validFrom");
    copy(&mut profile, "validTo", "validTo");
    copy(&mut profile, "transactionId", "transactionId");
    if let Some(purpose) = p.get("chargingProfilePurpose").and_then(Value::as_str) {
        profile.insert("chargingProfilePurpose".into(), purpose_201(purpose).into());
    }
    if let Some(s) = p.get("chargingSchedule") {
        let mut schedule = s.clone();
        // 2.0.1 numbers each schedule; the profile's id serves.
        schedule["id"] = p.get("chargingProfileId").cloned().unwrap_or(json!(1));
        profile.insert("chargingSchedule".into(), json!([schedule]));
    }
    let evse = payload.get("connectorId").cloned().unwrap_or(json!(0));
    (
        "SetChargingProfile",
        json!({"evseId": evse, "chargingProfile": Value::Object(profile)}),
    )
}

/// A 1.6 profile purpose's 2.0.1 name.
fn purpose_201(purpose: &str) -> &str {
    match purpose {
        "ChargePointMaxProfile" => "ChargingStationMaxProfile",
        other => other,
    }
}

/// What one profile (`csChargingProfiles`) allows at `t`, in its unit:
/// `None` when it does not apply then (not yet valid, expired, past its
/// duration).
pub fn limit_at(p: &Value, t: Timestamp) -> Option<(f64, String)> {
    let ts = |v: &Value| v.as_str().and_then(|s| s.parse::<Timestamp>().ok());
    if let Some(from) = p.get("validFrom").and_then(ts) {
        if t < from {
            return None;
        }
    }
    if let Some(to) = p.get("validTo").and_then(ts) {
        if t >= to {
            return None;
        }
    }
    let s = p.get("chargingSchedule")?;
    let unit = s.get("chargingRateUnit")?.as_str()?.to_string();
    // Without a start (Relative, or Absolute "from when received") the
    // schedule is taken to run from its first period now.
    let mut start = s.get("startSchedule").and_then(ts).unwrap_or(t);
    if p.get("chargingProfileKind").and_then(Value::as_str) == Some("Recurring") {
        let period = match p.get("recurrencyKind").and_then(Value::as_str) {
            Some("Daily") => 24 * 3600,
            _ => 7 * 24 * 3600,
        };
        if t >= start {
            let n = t.duration_since(start).as_secs() / period;
            start += SignedDuration::from_secs(n * period);
        }
    }
    if t < start {
        return None;
    }
    let offset = t.duration_since(start).as_secs();
    if let Some(d) = s.get("duration").and_then(Value::as_i64) {
        if offset >= d {
            return None;
        }
    }
    let mut limit = None;
    for period in s.get("chargingSchedulePeriod")?.as_array()? {
        let from = period.get("startPeriod")?.as_i64()?;
        if from <= offset {
            limit = period.get("limit")?.as_f64();
        }
    }
    limit.map(|l| (l, unit))
}

/// What a charger holding `profiles` (each a `csChargingProfiles`) allows
/// at `t`, in amperes per phase: per purpose the applicable profile with the
/// highest stack level wins, then the lowest of ChargePointMax and the
/// transaction's profile (TxProfile over TxDefaultProfile). `None`:
/// unlimited.
pub fn composite(profiles: &[Value], t: Timestamp, el: &Electrical) -> Option<f64> {
    let best = |purpose: &str| {
        profiles
            .iter()
            .filter(|p| p.get("chargingProfilePurpose").and_then(Value::as_str) == Some(purpose))
            .filter_map(|p| {
                let level = p.get("stackLevel").and_then(Value::as_i64)?;
                let (limit, unit) = limit_at(p, t)?;
                Some((level, el.amps(limit, &unit)))
            })
            .max_by_key(|(level, _)| *level)
            .map(|(_, amps)| amps)
    };
    let max = best("ChargePointMaxProfile");
    let tx = best("TxProfile").or_else(|| best("TxDefaultProfile"));
    match (max, tx) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EL: Electrical = Electrical {
        unit: RateUnit::Amps,
        phases: 3,
        voltage: 230.0,
    };

    fn slot(level: u32) -> Slot {
        Slot {
            id: 900 + level as i64,
            stack_level: level,
            purpose: "ChargePointMaxProfile".into(),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn profiles_restated_in_201() {
        let w = t("2030-01-06T23:00:00Z");
        let p = weekly(&slot(1), &EL, w, &[(w, 16.0)]);
        let (action, v) = to_201(&p);
        assert_eq!(action, "SetChargingProfile");
        assert_eq!(v["evseId"], 0);
        let cp = &v["chargingProfile"];
        assert_eq!(cp["id"], 901);
        assert_eq!(cp["chargingProfilePurpose"], "ChargingStationMaxProfile");
        assert_eq!(cp["recurrencyKind"], "Weekly");
        assert_eq!(cp["chargingSchedule"][0]["id"], 901);
        assert_eq!(
            cp["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"],
            16.0
        );
        assert_eq!(
            to_201(&json!({"id": 902})),
            ("ClearChargingProfile", json!({"chargingProfileId": 902}))
        );
    }

    #[test]
    fn weekly_profile_repeats_and_evaluates_like_a_charger() {
        let w = t("2030-01-06T23:00:00Z");
        let steps = [
            (w, 0.0),
            (w + SignedDuration::from_hours(22), 16.0),
            (w + SignedDuration::from_hours(30), 0.0),
        ];
        let p = weekly(&slot(1), &EL, w, &steps);
        let cs = &p["csChargingProfiles"];
        assert_eq!(
            cs["chargingSchedule"]["startSchedule"],
            "2030-01-06T23:00:00Z"
        );
        assert_eq!(
            cs["chargingSchedule"]["chargingSchedulePeriod"][1]["startPeriod"],
            22 * 3600
        );
        let at = |h: i64| {
            composite(
                std::slice::from_ref(cs),
                w + SignedDuration::from_hours(h),
                &EL,
            )
        };
        assert_eq!(at(1), Some(0.0));
        assert_eq!(at(23), Some(16.0));
        assert_eq!(at(31), Some(0.0));
        // Three weeks later, same hour of the week.
        assert_eq!(at(23 + 3 * 168), Some(16.0));
    }

    #[test]
    fn absolute_profile_expires_onto_the_one_beneath() {
        let now = t("2030-01-07T10:00:00Z");
        let standing = weekly(
            &slot(1),
            &EL,
            now - SignedDuration::from_hours(10),
            &[(now, 10.0)],
        );
        let live = absolute(
            &slot(2),
            &EL,
            now,
            SignedDuration::from_secs(300),
            &[(now, 0.0)],
        );
        let held = [
            standing["csChargingProfiles"].clone(),
            live["csChargingProfiles"].clone(),
        ];
        assert_eq!(
            composite(&held, now + SignedDuration::from_secs(10), &EL),
            Some(0.0)
        );
        // The live one ran out: the charger settles at the fail-safe, not 0 A.
        assert_eq!(
            composite(&held, now + SignedDuration::from_secs(301), &EL),
            Some(10.0)
        );
        // Before its start an absolute profile does not apply at all.
        assert_eq!(limit_at(&held[1], now - SignedDuration::from_secs(1)), None);
    }

    #[test]
    fn the_gateways_max_profile_caps_the_clouds_tx_profile() {
        let now = t("2030-01-07T10:00:00Z");
        let ours = absolute(
            &slot(5),
            &EL,
            now,
            SignedDuration::from_secs(600),
            &[(now, 8.0)],
        );
        let mut cloud = absolute(
            &Slot {
                id: 1,
                stack_level: 0,
                purpose: "TxProfile".into(),
            },
            &EL,
            now,
            SignedDuration::from_secs(600),
            &[(now, 20.0)],
        );
        cloud["csChargingProfiles"]["chargingSchedule"]["chargingRateUnit"] = "W".into();
        cloud["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] =
            4140.0.into();
        let held = [
            ours["csChargingProfiles"].clone(),
            cloud["csChargingProfiles"].clone(),
        ];
        assert_eq!(
            composite(&held, now, &EL),
            Some(6.0),
            "4140 W over 3×230 V is 6 A, below our 8 A"
        );
        assert_eq!(composite(&held[..1], now, &EL), Some(8.0));
        assert_eq!(composite(&[], now, &EL), None);
    }

    #[test]
    fn watts_and_rounding() {
        let el = Electrical {
            unit: RateUnit::Watts,
            phases: 3,
            voltage: 230.0,
        };
        assert_eq!(el.limit(16.0), 11040.0);
        assert_eq!(EL.limit(7.77), 7.7);
        assert_eq!(EL.limit(-3.0), 0.0);
        assert!((el.amps(11040.0, "W") - 16.0).abs() < 1e-9);
    }
}
