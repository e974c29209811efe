//! The smart-charging engine's decisions, with no I/O: given the config,
//! the live state, the connected chargers, the meter's last reading and
//! the time (wall clock for schedules, a monotonic instant for pacing),
//! work out every connected charger's limit and say what to journal and
//! which profiles or calls to send. `engine.rs` is the thin loop that
//! gathers the inputs and carries the decisions out.
//!
//! Two profiles per charger (§3.13 of OCPP 1.6 keeps the highest stack
//! level per purpose): the *standing* one, a weekly recurring profile with
//! the schedule (capped at the safe current when load management is on),
//! which holds even while the gateway is gone; and one level above it the
//! *live* one, absolute and with a bounded duration, carrying load shares
//! and pauses, refreshed while the gateway lives. If the gateway dies, the
//! live profile runs out and the charger settles on the standing one:
//! never 0 A for ever, never unlimited.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::plan::{pause_floor, plan, stop_start, Charger, LiveChange, LiveSent, Plan};
use super::schedule::Allowed;
use super::share::{self, Demand};
use super::status::{ChargerLimit, SmartStatus};
use crate::config::{ChargerLimits, Config, PauseMethod};
use crate::event::{Event, Link, Record, Source};
use crate::meter::MeterStatus;
use crate::state::{ChargerState, LiveState};

/// Amperes a charger may report above its limit before it is journaled as
/// implausible (meters and limits are not exact; the excess is ignored all
/// the same).
const IMPLAUSIBLE_OVER: f64 = 1.0;

/// How many meter readings the house-load median looks back over.
const HISTORY: usize = 5;

/// What one round of the engine sees.
pub struct Inputs<'a> {
    /// The config in force now (a SIGHUP may have changed it).
    pub cfg: &'a Config,
    pub state: &'a LiveState,
    /// Ids of connected chargers.
    pub connected: &'a [String],
    /// The meter's status, when a meter is configured.
    pub meter: Option<&'a MeterStatus>,
    /// Wall-clock time: schedules, overrides' ends, meter reading ages.
    pub now: Timestamp,
}

/// What the engine decided; the loop carries these out in order.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Journal an event (about a charger, or the site's when `None`).
    Journal {
        charger: Option<String>,
        event: Event,
    },
    /// Send these profiles to a charger, then report back with
    /// [`EngineState::on_sent`].
    Send { charger: String, plan: Plan },
    /// A call of the engine's own (pause method "stop"); nobody waits.
    Call {
        charger: String,
        action: &'static str,
        payload: Value,
    },
    /// What the API shows now.
    Status(SmartStatus),
}

/// How a send ended, for [`EngineState::on_sent`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub charger: String,
    pub standing: Option<String>,
    pub live: Option<LiveChange>,
    pub ok: bool,
}

/// Everything the engine carries from one round to the next.
#[derive(Debug)]
pub struct EngineState {
    chargers: HashMap<String, Charger>,
    /// Whether the meter was fresh last round (`None`: not decided yet).
    meter_ok: Option<bool>,
    /// Some charger has (or had) a pause or cap by staff.
    overrides: bool,
    /// The rest of the site per phase, one entry per meter reading.
    rest_history: VecDeque<[f64; 3]>,
    last_reading: Option<Timestamp>,
    started: Instant,
}

impl EngineState {
    /// A fresh engine started at `started`; `overrides` when the live state
    /// already holds a pause or cap.
    pub fn new(started: Instant, overrides: bool) -> EngineState {
        EngineState {
            chargers: HashMap::new(),
            meter_ok: None,
            overrides,
            rest_history: VecDeque::new(),
            last_reading: None,
            started,
        }
    }

    /// A journal record arrived. Returns whether it is worth a round now.
    pub fn on_record(&mut self, rec: &Record, now: Instant) -> bool {
        let Some(id) = rec.charger.as_deref() else {
            return false;
        };
        match &rec.event {
            Event::Connect {
                link: Link::Charger,
                ..
            }
            | Event::BootNotification { .. } => {
                let c = self.chargers.entry(id.to_string()).or_default();
                // Give the charger a moment: its boot goes first.
                c.dirty_at = Some(now + Duration::from_millis(500));
                c.retry_at = None;
                false
            }
            Event::RemoteAction {
                action,
                source: Source::Cloud,
                ..
            } if action == "ClearChargingProfile" => {
                // The cloud may have cleared ours with its own.
                if let Some(c) = self.chargers.get_mut(id) {
                    c.dirty_at = Some(now);
                }
                true
            }
            Event::Override { .. } => {
                self.overrides = true;
                true
            }
            Event::StartTransaction { .. } | Event::StopTransaction { .. } => true,
            _ => false,
        }
    }

    /// A send finished.
    pub fn on_sent(&mut self, done: Sent, now: Instant) {
        let Some(c) = self.chargers.get_mut(&done.charger) else {
            return;
        };
        c.in_flight = false;
        if !done.ok {
            // Rejected or unanswered: try again later, not in a loop.
            c.retry_at = Some(now + Duration::from_secs(60));
            return;
        }
        if done.standing.is_some() {
            c.standing_sent = done.standing;
        }
        match done.live {
            Some(LiveChange::Set(amps)) => c.live_sent = Some(LiveSent { amps, at: now }),
            Some(LiveChange::Cleared) => c.live_sent = None,
            None => {}
        }
    }

    /// Nothing to manage: no schedule, no load management, no meter, no
    /// pause, and no limit of ours left on any charger. A gateway like that
    /// should not pay a state copy a second for the engine.
    pub fn idle(&self, cfg: &Config, has_meter: bool) -> bool {
        cfg.smart.schedules.is_empty()
            && cfg.smart.load.is_none()
            && !has_meter
            && !self.overrides
            && self
                .chargers
                .values()
                .all(|c| c.journaled.is_none() && c.live_sent.is_none())
    }
}

/// One round: every connected charger's limit, and what to do about it.
pub fn decide(i: &Inputs, st: &mut EngineState, mono: Instant) -> Vec<Decision> {
    let mut out = Vec::new();
    st.chargers.retain(|id, _| i.connected.contains(id));
    for id in i.connected {
        st.chargers.entry(id.clone()).or_insert_with(|| Charger {
            dirty_at: Some(mono),
            ..Default::default()
        });
    }
    let reading = i.meter.and_then(|m| m.last.as_ref());
    let fresh = meter_fresh(i, st, reading, mono, &mut out);
    let mut base = base_limits(i);
    let mut available = None;
    if let Some(l) = &i.cfg.smart.load {
        match reading.filter(|_| fresh) {
            Some(r) => {
                let avail = st.available(i, l, r, &mut out);
                available = Some(avail);
                share_load(i, st, avail, &mut base);
            }
            None => {
                st.rest_history.clear();
                st.last_reading = None;
                let why = if st.meter_ok.is_none() {
                    "meter: no reading yet, safe current"
                } else {
                    "meter lost: safe current"
                };
                for b in base.values_mut() {
                    if l.safe_current < b.0 {
                        *b = (l.safe_current, why.into());
                    }
                }
            }
        }
    }
    let shown = apply(i, st, &base, mono, &mut out);
    let load = match (&i.cfg.smart.load, fresh) {
        (None, _) => "off",
        (Some(_), true) => "sharing",
        (Some(_), false) => "fallback",
    };
    out.push(Decision::Status(SmartStatus {
        load: load.into(),
        available_a: available,
        meter: i.meter.cloned(),
        chargers: shown,
    }));
    out
}

/// Whether the meter's last reading is recent enough to share load by;
/// journals the meter's loss and return.
fn meter_fresh(
    i: &Inputs,
    st: &mut EngineState,
    reading: Option<&crate::meter::Reading>,
    mono: Instant,
    out: &mut Vec<Decision>,
) -> bool {
    let Some(l) = &i.cfg.smart.load else {
        return false;
    };
    let fresh = reading.is_some_and(|r| {
        let age = i.now.duration_since(r.at);
        age < SignedDuration::try_from(l.meter_timeout).unwrap_or(SignedDuration::MAX)
    });
    let waited = mono.saturating_duration_since(st.started) >= l.meter_timeout;
    if st.meter_ok != Some(fresh) && (fresh || waited) {
        let event = match reading.filter(|_| fresh) {
            Some(r) => Event::MeterRestored {
                detail: format!(
                    "L1 {:.1} A, L2 {:.1} A, L3 {:.1} A",
                    r.current[0], r.current[1], r.current[2]
                ),
            },
            None => Event::MeterLost {
                error: i
                    .meter
                    .and_then(|m| m.error.clone())
                    .unwrap_or_else(|| format!("no reading for {}s", l.meter_timeout.as_secs())),
                fallback_a: l.safe_current,
            },
        };
        // The first "restored" after start is not news; a loss is.
        if st.meter_ok.is_some() || !fresh {
            out.push(Decision::Journal {
                charger: None,
                event,
            });
        }
        st.meter_ok = Some(fresh);
    }
    fresh
}

/// Each connected charger's limit from its schedule and any override,
/// before load management: (amperes, reason).
fn base_limits(i: &Inputs) -> BTreeMap<String, (f64, String)> {
    let cfg = i.cfg;
    let mut base = BTreeMap::new();
    for id in i.connected {
        let lim = cfg.limits(id);
        let (mut amps, mut reason) = match cfg.smart.schedule_for(id) {
            Some(s) => match s.allowed_at(i.now, &cfg.smart.tz) {
                Allowed::Closed => (0.0, format!("schedule \"{}\": outside its windows", s.name)),
                Allowed::Open(Some(cap)) if cap < lim.max_current => {
                    (cap, format!("schedule \"{}\": window cap", s.name))
                }
                Allowed::Open(_) => (
                    lim.max_current,
                    format!("schedule \"{}\": window open", s.name),
                ),
            },
            None => (lim.max_current, "charger maximum".into()),
        };
        if let Some(o) = active_override(i.state.chargers.get(id).map(|c| &**c), i.now) {
            if o.0 < amps {
                amps = o.0;
                reason = o.1;
            }
        }
        base.insert(id.clone(), (amps, reason));
    }
    base
}

impl EngineState {
    /// Amperes per phase the chargers may use together, from a fresh
    /// reading: the fuse less the margin and the rest of the site.
    fn available(
        &mut self,
        i: &Inputs,
        l: &crate::config::LoadConfig,
        r: &crate::meter::Reading,
        out: &mut Vec<Decision>,
    ) -> f64 {
        // What the chargers draw themselves, per phase: what each reports,
        // but never more than it may draw (its maximum, and the live limit
        // it was last sent). A charger that claims clearly more is lying or
        // broken: believing it would make the rest of the site look smaller
        // and raise everyone else past the fuse, so nothing it reports is
        // counted (its draw is taken for house load). Counting less makes
        // shares lower, never higher.
        let mut draw = [0.0f64; 3];
        for id in i.connected {
            let lim = i.cfg.limits(id);
            let reported = charger_draw(i.state.chargers.get(id).map(|c| &**c), &lim, i.now);
            let told = self
                .chargers
                .get(id)
                .and_then(|c| c.live_sent.as_ref().map(|s| s.amps))
                .unwrap_or(lim.max_current);
            let ceiling = lim.max_current.min(told);
            let implausible = reported > ceiling + IMPLAUSIBLE_OVER;
            let d = if implausible {
                0.0
            } else {
                reported.min(ceiling)
            };
            if let Some(c) = self.chargers.get_mut(id) {
                if implausible && !c.implausible {
                    out.push(Decision::Journal {
                        charger: Some(id.clone()),
                        event: Event::ProtocolError {
                            from: crate::event::Link::Charger,
                            code: "ImplausibleMeterValue".into(),
                            detail: format!(
                                "reports drawing {reported:.1} A, more than the {ceiling:.1} A it may; load management counts its draw as house load"
                            ),
                            frame: String::new(),
                            repeated: None,
                        },
                    });
                }
                c.implausible = implausible;
            }
            for p in draw.iter_mut().take(lim.electrical.phases as usize) {
                *p += d;
            }
        }
        // The rest of the site, per phase, as the median of the last few
        // readings: the meter's registers and the chargers' own meter
        // values are read at different moments, and one skewed reading
        // must not pause every session. The margin covers the few seconds
        // a real step takes to pass the filter.
        let rest: [f64; 3] = std::array::from_fn(|p| (r.current[p] - draw[p]).max(0.0));
        if self.last_reading != Some(r.at) {
            self.last_reading = Some(r.at);
            self.rest_history.push_back(rest);
        }
        while self.rest_history.len() > HISTORY {
            self.rest_history.pop_front();
        }
        let rest: [f64; 3] = std::array::from_fn(|p| {
            median(self.rest_history.iter().map(|h| h[p])).unwrap_or(rest[p])
        });
        share::available(l.fuse, l.margin, rest, [0.0; 3])
    }
}

/// The median of some readings; `None` for none.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Share what is available among the sessions, lowering `base` where a
/// share is below it; idle chargers get their minimum while it fits.
fn share_load(
    i: &Inputs,
    st: &mut EngineState,
    avail: f64,
    base: &mut BTreeMap<String, (f64, String)>,
) {
    let cfg = i.cfg;
    let now_s = i.now.as_second();
    let sessions: Vec<&String> = i
        .connected
        .iter()
        .filter(|id| {
            i.state
                .chargers
                .get(*id)
                .is_some_and(|c| !c.transactions.is_empty())
        })
        .collect();
    let demands: Vec<Demand> = sessions
        .iter()
        .map(|id| {
            let c = st.chargers.get(*id);
            Demand {
                min: cfg.limits(id).min_current.max(6.0),
                max: base.get(*id).map_or(0.0, |b| b.0),
                waiting_since: c.and_then(|c| c.waiting_since),
                running_since: c.and_then(|c| c.running_since),
            }
        })
        .collect();
    let got = share::share(
        avail,
        &demands,
        now_s,
        cfg.smart.smart.turn.as_secs() as i64,
    );
    let mut left = avail - got.iter().sum::<f64>();
    for (id, amps) in sessions.iter().zip(&got) {
        let c = st.chargers.entry((*id).clone()).or_default();
        if *amps > 0.0 {
            c.waiting_since = None;
            c.running_since = c.running_since.or(Some(now_s));
        } else {
            c.running_since = None;
            c.waiting_since = c.waiting_since.or(Some(now_s));
        }
        if let Some(b) = base.get_mut(*id) {
            if *amps < b.0 {
                b.1 = if *amps == 0.0 {
                    "load: waiting for its turn (not enough for everyone)".into()
                } else {
                    "load share".into()
                };
                b.0 = *amps;
            }
        }
    }
    // Idle chargers get their minimum while it fits, so that a car
    // plugging in can start; the next round shares properly.
    for id in i.connected {
        if sessions.contains(&id) {
            continue;
        }
        let min = cfg.limits(id).min_current.max(6.0);
        let Some(b) = base.get_mut(id) else { continue };
        let give = if left >= min { min.min(b.0) } else { 0.0 };
        left -= give;
        if give < b.0 {
            let why = if give > 0.0 {
                "load: idle, holding the minimum"
            } else {
                "load: idle, nothing left"
            };
            *b = (give, why.into());
        }
    }
}

/// Journal what changed and plan what must be sent; returns what the API
/// shows per charger.
fn apply(
    i: &Inputs,
    st: &mut EngineState,
    base: &BTreeMap<String, (f64, String)>,
    mono: Instant,
    out: &mut Vec<Decision>,
) -> BTreeMap<String, ChargerLimit> {
    let cfg = i.cfg;
    let mut shown = BTreeMap::new();
    for id in i.connected {
        let lim = cfg.limits(id);
        let cs = i.state.chargers.get(id).map(|c| &**c);
        let overridden = active_override(cs, i.now).is_some();
        let (Some(c), Some((decided, reason))) = (st.chargers.get_mut(id), base.get(id)) else {
            continue;
        };
        let has_live = cfg.smart.load.is_some() || overridden;
        let managed = has_live || cfg.smart.schedule_for(id).is_some();
        if !managed && c.journaled.is_none() && c.live_sent.is_none() {
            continue;
        }
        let decided = *decided;
        let mut reason = reason.clone();
        let amps = pause_floor(decided, &lim);
        if amps != decided {
            reason = format!("{reason} (sent as {amps} A: this charger's pause method)");
        }
        let entry = ChargerLimit {
            limit_a: decided,
            reason: reason.clone(),
        };
        shown.insert(id.clone(), entry.clone());
        let changed = match &c.journaled {
            None => true,
            // Load shares move with every reading: the journal gets the
            // changes worth a new profile, not the noise.
            Some(j) => {
                j.reason != entry.reason
                    || (j.limit_a - entry.limit_a).abs() >= cfg.smart.smart.hysteresis
                    || (entry.limit_a == 0.0) != (j.limit_a == 0.0)
            }
        };
        if changed {
            out.push(Decision::Journal {
                charger: Some(id.clone()),
                event: Event::LimitChanged {
                    limit_a: decided,
                    reason,
                },
            });
            c.journaled = Some(entry);
        }
        if let Some(plan) = plan(cfg, id, c, &lim, amps, has_live, i.now, mono) {
            c.in_flight = true;
            c.dirty_at = None;
            out.push(Decision::Send {
                charger: id.clone(),
                plan,
            });
        }
        if lim.pause == PauseMethod::StopStart {
            if let Some((action, payload)) = stop_start(c, cs, decided < lim.min_current) {
                out.push(Decision::Call {
                    charger: id.clone(),
                    action,
                    payload,
                });
            }
        }
    }
    shown
}

/// A pause or cap in force at `now`: (amperes, reason).
fn active_override(c: Option<&ChargerState>, now: Timestamp) -> Option<(f64, String)> {
    let c = c?;
    let live = |o: &&crate::state::Override| {
        !o.until
            .as_ref()
            .is_some_and(|u| u.parse::<Timestamp>().is_ok_and(|u| now >= u))
    };
    // A pause that ran out leaves the cap under it.
    let o = c
        .override_
        .as_ref()
        .filter(live)
        .or_else(|| c.cap.as_ref().filter(live))?;
    let what = if o.limit_a == 0.0 {
        "paused".to_string()
    } else {
        format!("capped at {} A", o.limit_a)
    };
    let until = o
        .until
        .as_ref()
        .map(|u| format!(" until {u}"))
        .unwrap_or_default();
    Some((o.limit_a, format!("{what} by {}{until}", o.by)))
}

/// What a charger draws now (amperes per phase), from its own recent meter
/// values. A charger that does not report its current counts as drawing
/// nothing, so its draw is taken for house load: shares come out lower,
/// never higher (configure chargers to sample Current.Import).
fn charger_draw(c: Option<&ChargerState>, lim: &ChargerLimits, now: Timestamp) -> f64 {
    let Some(c) = c else { return 0.0 };
    if c.transactions.is_empty() {
        return 0.0;
    }
    let recent = c
        .meter
        .time_ms
        .is_some_and(|t| now.as_millisecond() - t < 120_000);
    if recent {
        if let Some(a) = c.meter.current_a {
            return a;
        }
        if let Some(w) = c.meter.power_w {
            return w / (lim.electrical.voltage * lim.electrical.phases as f64);
        }
    }
    0.0
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
