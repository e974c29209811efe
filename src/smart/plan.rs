//! Which charging profiles one charger needs now: the standing weekly
//! profile (schedule, or the safe current under load management) and the
//! live one (the limit now, for a lease), each sent only when it changed,
//! is due for a refresh, or the charger may have lost it. Pure.

use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use super::profile::{self, Slot};
use super::schedule;
use super::status::ChargerLimit;
use crate::config::{ChargerLimits, Config, PauseMethod};
use crate::state::ChargerState;

/// What the engine remembers about one connected charger.
#[derive(Debug, Default)]
pub struct Charger {
    /// Profiles must be (re)sent from this instant on (after a connect or
    /// a boot, the charger may have lost or never had them).
    pub(super) dirty_at: Option<Instant>,
    pub(super) standing_sent: Option<String>,
    pub(super) live_sent: Option<LiveSent>,
    pub(super) in_flight: bool,
    pub(super) retry_at: Option<Instant>,
    /// Load sharing turns.
    pub(super) running_since: Option<i64>,
    pub(super) waiting_since: Option<i64>,
    pub(super) journaled: Option<ChargerLimit>,
    /// Its reported draw was more than it may draw (journaled once).
    pub(super) implausible: bool,
    /// Pause method "stop": the session the gateway stopped, to restart.
    pub(super) stopped: Option<(u32, String)>,
}

#[derive(Debug)]
pub struct LiveSent {
    pub(super) amps: f64,
    pub(super) at: Instant,
}

/// The profiles to send to one charger now.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// SetChargingProfile payloads, or a ClearChargingProfile's (`{"id"}`).
    pub calls: Vec<Value>,
    /// The standing profile sent, to compare with the next round's.
    pub standing_key: Option<String>,
    pub live: Option<LiveChange>,
}

/// What a send did to the live profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LiveChange {
    Set(f64),
    Cleared,
}

/// Amperes below the charger's minimum: 0 (pause) or the minimum itself
/// for chargers that mishandle 0 A.
pub(super) fn pause_floor(amps: f64, lim: &ChargerLimits) -> f64 {
    if amps >= lim.min_current || amps <= 0.0 && lim.pause == PauseMethod::Zero {
        return amps;
    }
    match lim.pause {
        PauseMethod::Zero => 0.0,
        PauseMethod::Minimum | PauseMethod::StopStart => lim.min_current,
    }
}

/// The profiles to send to one charger now, if any.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan(
    cfg: &Config,
    id: &str,
    c: &Charger,
    lim: &ChargerLimits,
    amps: f64,
    has_live: bool,
    now: Timestamp,
    t: Instant,
) -> Option<Plan> {
    if c.in_flight || c.retry_at.is_some_and(|r| t < r) || c.dirty_at.is_some_and(|d| t < d) {
        return None;
    }
    let dirty = c.dirty_at.is_some();
    let s = &cfg.smart;
    let schedule = s.schedule_for(id);
    let mut calls = Vec::new();
    let mut standing_key = None;
    if schedule.is_some() || s.load.is_some() {
        let call = standing(cfg, id, lim, now);
        let key = call.to_string();
        if dirty || c.standing_sent.as_deref() != Some(key.as_str()) {
            calls.push(call);
            standing_key = Some(key);
        }
    }
    let smart = &s.smart;
    let mut live = None;
    if has_live {
        let due = match &c.live_sent {
            None => true,
            Some(l) => {
                let since = t.saturating_duration_since(l.at);
                let refresh = since >= smart.lease / 2;
                let down = amps < l.amps && (l.amps - amps >= smart.hysteresis || amps == 0.0);
                let up = amps > l.amps
                    && (amps - l.amps >= smart.hysteresis || l.amps == 0.0)
                    && since >= smart.min_interval;
                refresh || down || up
            }
        };
        if dirty || due {
            calls.push(live_profile(cfg, id, lim, amps, now));
            live = Some(LiveChange::Set(amps));
        }
    } else if c.live_sent.is_some() {
        // No live limit any more (a pause ended): remove the live profile.
        calls.push(json!({ "id": smart.profile_id + 1 }));
        live = Some(LiveChange::Cleared);
    }
    (!calls.is_empty()).then_some(Plan {
        calls,
        standing_key,
        live,
    })
}

/// The standing profile: this week's schedule (or the safe current),
/// recurring weekly.
fn standing(cfg: &Config, id: &str, lim: &ChargerLimits, now: Timestamp) -> Value {
    let s = &cfg.smart;
    let cap = s
        .load
        .as_ref()
        .map_or(lim.max_current, |l| l.safe_current.min(lim.max_current));
    let week = schedule::week_start(now, &s.tz);
    let steps: Vec<(Timestamp, f64)> = match s.schedule_for(id) {
        Some(sch) => sch
            .steps(week, week + schedule::WEEK, &s.tz)
            .into_iter()
            .map(|(t, a)| (t, pause_floor(a.amps(lim.max_current).min(cap), lim)))
            .collect(),
        None => vec![(week, pause_floor(cap, lim))],
    };
    let slot = Slot {
        id: s.smart.profile_id,
        stack_level: s.smart.stack_level,
        purpose: s.smart.purpose.clone(),
    };
    profile::weekly(&slot, &lim.electrical, week, &steps)
}

/// The live profile: `amps` for a lease, the schedule's own steps within
/// it capped by `amps`.
fn live_profile(cfg: &Config, id: &str, lim: &ChargerLimits, amps: f64, now: Timestamp) -> Value {
    let s = &cfg.smart;
    let lease = SignedDuration::try_from(s.smart.lease).unwrap_or(SignedDuration::from_secs(300));
    let start = now - SignedDuration::from_secs(1);
    let steps: Vec<(Timestamp, f64)> = match s.schedule_for(id) {
        Some(sch) => sch
            .steps(start, start + lease, &s.tz)
            .into_iter()
            .map(|(t, a)| (t, pause_floor(a.amps(lim.max_current).min(amps), lim)))
            .collect(),
        None => vec![(start, amps)],
    };
    let slot = Slot {
        id: s.smart.profile_id + 1,
        stack_level: s.smart.stack_level + 1,
        purpose: s.smart.purpose.clone(),
    };
    profile::absolute(&slot, &lim.electrical, start, lease, &steps)
}

/// Pause method "stop": stop the session instead of a 0 A limit, and start
/// it again (same id tag, same connector) when charging may resume.
pub(super) fn stop_start(
    c: &mut Charger,
    st: Option<&ChargerState>,
    paused: bool,
) -> Option<(&'static str, Value)> {
    if paused {
        let tx = st?.transactions.values().next()?;
        let tx_id = tx.transaction_id?;
        if c.stopped.is_some() {
            return None;
        }
        c.stopped = Some((tx.connector, tx.id_tag.clone()));
        Some(("RemoteStopTransaction", json!({ "transactionId": tx_id })))
    } else {
        let (connector, tag) = c.stopped.take()?;
        Some((
            "RemoteStartTransaction",
            json!({ "connectorId": connector, "idTag": tag }),
        ))
    }
}
