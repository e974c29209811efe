//! The smart-charging loop: once a second (and at once when a charger
//! connects, boots, starts or stops a session, or staff pause one) it works
//! out every connected charger's limit from its schedule, the site's load
//! and any pause, sends the charging profiles that changed, and journals
//! what changed and why.
//!
//! Two profiles per charger (§3.13 of OCPP 1.6 keeps the highest stack
//! level per purpose): the *standing* one, a weekly recurring profile with
//! the schedule (capped at the safe current when load management is on),
//! which holds even while the gateway is gone; and one level above it the
//! *live* one, absolute and with a bounded duration, carrying load shares
//! and pauses, refreshed while the gateway lives. If the gateway dies, the
//! live profile runs out and the charger settles on the standing one:
//! never 0 A for ever, never unlimited.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::profile::{self, Slot};
use super::schedule::{self, Allowed};
use super::share::{self, Demand};
use super::status::{ChargerLimit, StatusHandle};
use crate::clock::Clock;
use crate::config::{ChargerLimits, Config, PauseMethod};
use crate::event::{Event, Source};
use crate::hub::{CallOutcome, Ctx};
use crate::meter::MeterStatus;
use crate::state::ChargerState;

/// What the engine remembers about one connected charger.
#[derive(Default)]
struct Charger {
    /// Profiles must be (re)sent from this instant on (after a connect or
    /// a boot, the charger may have lost or never had them).
    dirty_at: Option<Instant>,
    standing_sent: Option<String>,
    live_sent: Option<LiveSent>,
    in_flight: bool,
    retry_at: Option<Instant>,
    /// Load sharing turns.
    running_since: Option<i64>,
    waiting_since: Option<i64>,
    journaled: Option<ChargerLimit>,
    /// Pause method "stop": the session the gateway stopped, to restart.
    stopped: Option<(u32, String)>,
}

struct LiveSent {
    amps: f64,
    at: Instant,
}

/// What a send did to the live profile.
#[derive(Clone, Copy)]
enum LiveChange {
    Set(f64),
    Cleared,
}

/// A finished send, back to the loop.
struct Sent {
    charger: String,
    standing: Option<String>,
    live: Option<LiveChange>,
    ok: bool,
}

/// Run the engine until shutdown. Chargers with no schedule, no load
/// management and no pause are left alone: no profile, no journal entry.
pub async fn run(
    ctx: Ctx,
    clock: Clock,
    meter: Option<watch::Receiver<MeterStatus>>,
    status: StatusHandle,
) {
    let mut events = ctx.journal.subscribe();
    let (sent_tx, mut sent_rx) = mpsc::channel::<Sent>(64);
    let mut chargers: HashMap<String, Charger> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = ctx.shutdown.clone();
    let mut meter_ok: Option<bool> = None;
    // A gateway with no schedule, no load management and no pause ever
    // does nothing here; it should not pay a state copy a second for it.
    let mut overrides = ctx
        .journal
        .state()
        .chargers
        .values()
        .any(|c| c.override_.is_some());
    let mut rest_history: std::collections::VecDeque<[f64; 3]> = Default::default();
    let mut last_reading: Option<Timestamp> = None;
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            ev = events.recv() => match ev {
                Ok(rec) => {
                    let Some(id) = rec.charger.as_deref() else { continue };
                    match &rec.event {
                        Event::Connect { link: crate::event::Link::Charger, .. } | Event::BootNotification { .. } => {
                            let c = chargers.entry(id.to_string()).or_default();
                            // Give the charger a moment: its boot goes first.
                            c.dirty_at = Some(Instant::now() + Duration::from_millis(500));
                            c.retry_at = None;
                            continue;
                        }
                        Event::RemoteAction { action, source: Source::Cloud, .. } if action == "ClearChargingProfile" => {
                            // The cloud may have cleared ours with its own.
                            if let Some(c) = chargers.get_mut(id) {
                                c.dirty_at = Some(Instant::now());
                            }
                        }
                        Event::Override { .. } => overrides = true,
                        Event::StartTransaction { .. } | Event::StopTransaction { .. } => {}
                        _ => continue,
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            Some(done) = sent_rx.recv() => {
                if let Some(c) = chargers.get_mut(&done.charger) {
                    c.in_flight = false;
                    if done.ok {
                        if done.standing.is_some() {
                            c.standing_sent = done.standing;
                        }
                        match done.live {
                            Some(LiveChange::Set(amps)) => c.live_sent = Some(LiveSent { amps, at: Instant::now() }),
                            Some(LiveChange::Cleared) => c.live_sent = None,
                            None => {}
                        }
                    } else {
                        // Rejected or unanswered: try again later, not in a loop.
                        c.retry_at = Some(Instant::now() + Duration::from_secs(60));
                    }
                }
                continue;
            }
            _ = shutdown.changed() => return,
        }
        let now = clock.now();
        // The config in force now: a SIGHUP may have changed schedules.
        let cfg = ctx.live.get();
        let idle = cfg.smart.schedules.is_empty()
            && cfg.smart.load.is_none()
            && meter.is_none()
            && !overrides
            && chargers
                .values()
                .all(|c| c.journaled.is_none() && c.live_sent.is_none());
        if idle {
            continue;
        }
        let state = ctx.journal.state();
        let connected = ctx.registry.connected();
        chargers.retain(|id, _| connected.contains(id));
        for id in &connected {
            chargers.entry(id.clone()).or_insert_with(|| Charger {
                dirty_at: Some(Instant::now()),
                ..Default::default()
            });
        }

        // Load management: sharing while the meter answers, else fallback.
        let load = cfg.smart.load.clone();
        let reading = meter.as_ref().and_then(|m| m.borrow().clone().last);
        let fresh = match (&load, &reading) {
            (Some(l), Some(r)) => {
                let age = now.duration_since(r.at);
                age < SignedDuration::try_from(l.meter_timeout).unwrap_or(SignedDuration::MAX)
            }
            _ => false,
        };
        if let Some(l) = &load {
            let waited = started.elapsed() >= l.meter_timeout;
            if meter_ok != Some(fresh) && (fresh || waited) {
                let ev = if fresh {
                    let r = reading.as_ref().expect("fresh means a reading");
                    Event::MeterRestored {
                        detail: format!(
                            "L1 {:.1} A, L2 {:.1} A, L3 {:.1} A",
                            r.current[0], r.current[1], r.current[2]
                        ),
                    }
                } else {
                    let error = meter
                        .as_ref()
                        .and_then(|m| m.borrow().error.clone())
                        .unwrap_or_else(|| {
                            format!("no reading for {}s", l.meter_timeout.as_secs())
                        });
                    Event::MeterLost {
                        error,
                        fallback_a: l.safe_current,
                    }
                };
                // The first "restored" after start is not news; a loss is.
                if meter_ok.is_some() || !fresh {
                    ctx.journal.record(None, ev).await;
                }
                meter_ok = Some(fresh);
            }
        }

        // Each connected charger: schedule, then override, then load share.
        let mut base: BTreeMap<String, (f64, String)> = BTreeMap::new();
        for id in &connected {
            let lim = cfg.limits(id);
            let (mut amps, mut reason) = match cfg.smart.schedule_for(id) {
                Some(s) => match s.allowed_at(now, &cfg.smart.tz) {
                    Allowed::Closed => {
                        (0.0, format!("schedule \"{}\": outside its windows", s.name))
                    }
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
            if let Some(o) = active_override(state.chargers.get(id), now) {
                if o.0 < amps {
                    amps = o.0;
                    reason = o.1;
                }
            }
            base.insert(id.clone(), (amps, reason));
        }
        let mut available = None;
        if let Some(l) = &load {
            if fresh {
                let r = reading.as_ref().expect("fresh means a reading");
                // What the chargers draw themselves, per phase.
                let mut draw = [0.0f64; 3];
                for id in &connected {
                    let d = charger_draw(state.chargers.get(id), &cfg.limits(id), now);
                    let phases = cfg.limits(id).electrical.phases as usize;
                    for p in draw.iter_mut().take(phases) {
                        *p += d;
                    }
                }
                // The rest of the site, per phase, as the median of the last
                // five readings: the meter's registers and the chargers' own
                // meter values are read at different moments, and one skewed
                // reading must not pause every session. The margin covers
                // the few seconds a real step takes to pass the filter.
                let rest: [f64; 3] = std::array::from_fn(|p| (r.current[p] - draw[p]).max(0.0));
                if last_reading != Some(r.at) {
                    last_reading = Some(r.at);
                    rest_history.push_back(rest);
                }
                while rest_history.len() > 5 {
                    rest_history.pop_front();
                }
                let rest: [f64; 3] = std::array::from_fn(|p| {
                    let mut v: Vec<f64> = rest_history.iter().map(|h| h[p]).collect();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                });
                let avail = share::available(l.fuse, l.margin, rest, [0.0; 3]);
                available = Some(avail);
                let now_s = now.as_second();
                let sessions: Vec<&String> = connected
                    .iter()
                    .filter(|id| {
                        state
                            .chargers
                            .get(*id)
                            .is_some_and(|c| !c.transactions.is_empty())
                    })
                    .collect();
                let demands: Vec<Demand> = sessions
                    .iter()
                    .map(|id| {
                        let lim = cfg.limits(id);
                        let c = chargers.get(*id);
                        Demand {
                            min: lim.min_current.max(6.0),
                            max: base[*id].0,
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
                    let c = chargers.entry((*id).clone()).or_default();
                    if *amps > 0.0 {
                        c.waiting_since = None;
                        c.running_since = c.running_since.or(Some(now_s));
                    } else {
                        c.running_since = None;
                        c.waiting_since = c.waiting_since.or(Some(now_s));
                    }
                    let b = base
                        .get_mut(*id)
                        .expect("every connected charger has a base");
                    if *amps < b.0 {
                        b.1 = if *amps == 0.0 {
                            "load: waiting for its turn (not enough for everyone)".into()
                        } else {
                            "load share".into()
                        };
                        b.0 = *amps;
                    }
                }
                // Idle chargers get their minimum while it fits, so that a car
                // plugging in can start; the next round shares properly.
                for id in &connected {
                    if sessions.contains(&id) {
                        continue;
                    }
                    let min = cfg.limits(id).min_current.max(6.0);
                    let b = base
                        .get_mut(id)
                        .expect("every connected charger has a base");
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
            } else {
                rest_history.clear();
                let why = if meter_ok.is_none() {
                    "meter: no reading yet, safe current"
                } else {
                    "meter lost: safe current"
                };
                for id in &connected {
                    let b = base
                        .get_mut(id)
                        .expect("every connected charger has a base");
                    if l.safe_current < b.0 {
                        *b = (l.safe_current, why.into());
                    }
                }
            }
        }

        // Journal what changed; send what must be sent.
        let mut shown = BTreeMap::new();
        for id in &connected {
            let lim = cfg.limits(id);
            let overridden = active_override(state.chargers.get(id), now).is_some();
            let c = chargers.get_mut(id).expect("inserted above");
            let has_live = load.is_some() || overridden;
            let managed = has_live || cfg.smart.schedule_for(id).is_some();
            if !managed && c.journaled.is_none() && c.live_sent.is_none() {
                continue;
            }
            let (decided, mut reason) = base[id].clone();
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
                // Load shares move with every reading: the journal gets
                // the changes worth a new profile, not the noise.
                Some(j) => {
                    j.reason != entry.reason
                        || (j.limit_a - entry.limit_a).abs() >= cfg.smart.smart.hysteresis
                        || (entry.limit_a == 0.0) != (j.limit_a == 0.0)
                }
            };
            if changed {
                ctx.journal
                    .record(
                        Some(id),
                        Event::LimitChanged {
                            limit_a: decided,
                            reason,
                        },
                    )
                    .await;
                c.journaled = Some(entry);
            }
            if let Some(plan) = plan(&cfg, id, c, &lim, amps, has_live, now) {
                c.in_flight = true;
                c.dirty_at = None;
                tokio::spawn(send(ctx.clone(), id.clone(), plan, sent_tx.clone()));
            }
            if lim.pause == PauseMethod::StopStart {
                stop_start(
                    &ctx,
                    id,
                    c,
                    state.chargers.get(id),
                    decided < lim.min_current,
                );
            }
        }
        let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
        st.load = match (&load, fresh) {
            (None, _) => "off".into(),
            (Some(_), true) => "sharing".into(),
            (Some(_), false) => "fallback".into(),
        };
        st.available_a = available;
        st.meter = meter.as_ref().map(|m| m.borrow().clone());
        st.chargers = shown;
    }
}

/// A pause or cap in force at `now`: (amperes, reason).
fn active_override(c: Option<&ChargerState>, now: Timestamp) -> Option<(f64, String)> {
    let o = c?.override_.as_ref()?;
    if let Some(until) = &o.until {
        if until.parse::<Timestamp>().is_ok_and(|u| now >= u) {
            return None;
        }
    }
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

/// Amperes below the charger's minimum: 0 (pause) or the minimum itself
/// for chargers that mishandle 0 A.
fn pause_floor(amps: f64, lim: &ChargerLimits) -> f64 {
    if amps >= lim.min_current || amps <= 0.0 && lim.pause == PauseMethod::Zero {
        return amps;
    }
    match lim.pause {
        PauseMethod::Zero => 0.0,
        PauseMethod::Minimum | PauseMethod::StopStart => lim.min_current,
    }
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

/// The profiles to send to one charger now, if any.
struct Plan {
    calls: Vec<Value>,
    standing_key: Option<String>,
    live_amps: Option<LiveChange>,
}

fn plan(
    cfg: &Config,
    id: &str,
    c: &Charger,
    lim: &ChargerLimits,
    amps: f64,
    has_live: bool,
    now: Timestamp,
) -> Option<Plan> {
    let t = Instant::now();
    if c.in_flight || c.retry_at.is_some_and(|r| t < r) || c.dirty_at.is_some_and(|d| t < d) {
        return None;
    }
    let dirty = c.dirty_at.is_some();
    let s = &cfg.smart;
    let cfg = &s.smart;
    let mut calls = Vec::new();
    let mut standing_key = None;
    let schedule = s.schedule_for(id);
    if schedule.is_some() || s.load.is_some() {
        let cap = s
            .load
            .as_ref()
            .map_or(lim.max_current, |l| l.safe_current.min(lim.max_current));
        let week = schedule::week_start(now, &s.tz);
        let steps: Vec<(Timestamp, f64)> = match schedule {
            Some(sch) => sch
                .steps(week, week + schedule::WEEK, &s.tz)
                .into_iter()
                .map(|(t, a)| (t, pause_floor(a.amps(lim.max_current).min(cap), lim)))
                .collect(),
            None => vec![(week, pause_floor(cap, lim))],
        };
        let slot = Slot {
            id: cfg.profile_id,
            stack_level: cfg.stack_level,
            purpose: cfg.purpose.clone(),
        };
        let call = profile::weekly(&slot, &lim.electrical, week, &steps);
        let key = call.to_string();
        if dirty || c.standing_sent.as_deref() != Some(key.as_str()) {
            calls.push(call);
            standing_key = Some(key);
        }
    }
    let mut live_amps = None;
    if has_live {
        let due = match &c.live_sent {
            None => true,
            Some(l) => {
                let since = t.duration_since(l.at);
                let refresh = since >= cfg.lease / 2;
                let down = amps < l.amps && (l.amps - amps >= cfg.hysteresis || amps == 0.0);
                let up = amps > l.amps
                    && (amps - l.amps >= cfg.hysteresis || l.amps == 0.0)
                    && since >= cfg.min_interval;
                refresh || down || up
            }
        };
        if dirty || due {
            let lease =
                SignedDuration::try_from(cfg.lease).unwrap_or(SignedDuration::from_secs(300));
            // The schedule's own steps within the lease, each capped by now's limit.
            let start = now - SignedDuration::from_secs(1);
            let steps: Vec<(Timestamp, f64)> = match schedule {
                Some(sch) => sch
                    .steps(start, start + lease, &s.tz)
                    .into_iter()
                    .map(|(t, a)| (t, pause_floor(a.amps(lim.max_current).min(amps), lim)))
                    .collect(),
                None => vec![(start, amps)],
            };
            let slot = Slot {
                id: cfg.profile_id + 1,
                stack_level: cfg.stack_level + 1,
                purpose: cfg.purpose.clone(),
            };
            calls.push(profile::absolute(
                &slot,
                &lim.electrical,
                start,
                lease,
                &steps,
            ));
            live_amps = Some(LiveChange::Set(amps));
        }
    } else if c.live_sent.is_some() {
        // No live limit any more (a pause ended): remove the live profile.
        calls.push(json!({ "id": cfg.profile_id + 1 }));
        live_amps = Some(LiveChange::Cleared);
    }
    (!calls.is_empty()).then_some(Plan {
        calls,
        standing_key,
        live_amps,
    })
}

async fn send(ctx: Ctx, id: String, plan: Plan, done: mpsc::Sender<Sent>) {
    let mut ok = true;
    for call in plan.calls {
        let action = if call.get("csChargingProfiles").is_some() {
            "SetChargingProfile"
        } else {
            "ClearChargingProfile"
        };
        let wait = ctx.cfg.call_timeout + Duration::from_secs(5);
        let out = ctx
            .registry
            .call(&id, action, call, Source::Smart, wait)
            .await;
        let accepted = matches!(&out, Some(CallOutcome::Result(v)) if v.get("status").and_then(Value::as_str) == Some("Accepted"));
        // Nothing to clear is not a failure.
        let unknown = action == "ClearChargingProfile"
            && matches!(&out, Some(CallOutcome::Result(v)) if v.get("status").and_then(Value::as_str) == Some("Unknown"));
        if !(accepted || unknown) {
            log::warn!(
                "{id}: {action} not accepted: {}",
                out.map(|o| o.brief())
                    .unwrap_or_else(|| "disconnected".into())
            );
            ok = false;
        }
    }
    let _ = done
        .send(Sent {
            charger: id,
            standing: plan.standing_key,
            live: plan.live_amps.filter(|_| ok),
            ok,
        })
        .await;
}

/// Pause method "stop": stop the session instead of a 0 A limit, and start
/// it again (same id tag, same connector) when charging may resume.
fn stop_start(ctx: &Ctx, id: &str, c: &mut Charger, st: Option<&ChargerState>, paused: bool) {
    let wait = ctx.cfg.call_timeout + Duration::from_secs(5);
    let (action, payload) = if paused {
        let Some(tx) = st.and_then(|s| s.transactions.values().next()) else {
            return;
        };
        let Some(tx_id) = tx.transaction_id else {
            return;
        };
        if c.stopped.is_some() {
            return;
        }
        c.stopped = Some((tx.connector, tx.id_tag.clone()));
        ("RemoteStopTransaction", json!({ "transactionId": tx_id }))
    } else {
        let Some((connector, tag)) = c.stopped.take() else {
            return;
        };
        (
            "RemoteStartTransaction",
            json!({ "connectorId": connector, "idTag": tag }),
        )
    };
    let reg = ctx.registry.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        reg.call(&id, action, payload, Source::Smart, wait).await;
    });
}
