//! Unit tests of the engine's decisions: no sockets, no clock reads; the
//! wall clock and the monotonic instant are the tests' own.

use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::meter::{MeterStatus, Reading};
use crate::state::{ChargerState, LiveState, Override, Transaction};
use serde_json::json;

fn cfg(extra: &str) -> Config {
    let text = format!(
        "[site]\ntimezone = \"UTC\"\n\
         [[charger]]\nid = \"A\"\nmax_current_a = 32\n\
         [[charger]]\nid = \"B\"\nmax_current_a = 32\n{extra}"
    );
    Config::parse(&text, "t.toml").expect("test config parses")
}

const LOAD: &str = "[meter]\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\nmodel = \"sdm630\"\n[load]\nfuse_a = 40\nmargin_a = 0\nsafe_current_a = 10\nmeter_timeout_secs = 30\n";

fn at(s: &str) -> Timestamp {
    s.parse().expect("test timestamp")
}

fn charging(id: &str, amps: f64, now: Timestamp) -> ChargerState {
    let mut c = ChargerState {
        id: id.into(),
        ..Default::default()
    };
    c.transactions.insert(
        1,
        Transaction {
            connector: 1,
            transaction_id: Some(7),
            transaction_ref: None,
            id_tag: "TAG".into(),
            meter_start: 0,
            started: "2030-01-07T10:00:00Z".into(),
        },
    );
    c.meter.current_a = Some(amps);
    c.meter.time_ms = Some(now.as_millisecond());
    c
}

fn meter(current: [f64; 3], at: Timestamp) -> MeterStatus {
    MeterStatus {
        model: "sdm630".into(),
        connected: true,
        last: Some(Reading {
            current,
            power_w: None,
            energy_import_kwh: None,
            at,
        }),
        error: None,
    }
}

struct World {
    cfg: Config,
    state: LiveState,
    connected: Vec<String>,
    meter: Option<MeterStatus>,
}

impl World {
    fn new(cfg: Config) -> World {
        World {
            cfg,
            state: LiveState::default(),
            connected: vec!["A".into(), "B".into()],
            meter: None,
        }
    }

    fn round(&self, st: &mut EngineState, now: Timestamp, mono: Instant) -> Vec<Decision> {
        let i = Inputs {
            cfg: &self.cfg,
            state: &self.state,
            connected: &self.connected,
            meter: self.meter.as_ref(),
            now,
        };
        decide(&i, st, mono)
    }
}

fn status(ds: &[Decision]) -> &SmartStatus {
    ds.iter()
        .find_map(|d| match d {
            Decision::Status(s) => Some(s),
            _ => None,
        })
        .expect("every round reports its status")
}

fn limit(ds: &[Decision], id: &str) -> f64 {
    status(ds).chargers[id].limit_a
}

fn journaled(ds: &[Decision]) -> Vec<&Event> {
    ds.iter()
        .filter_map(|d| match d {
            Decision::Journal { event, .. } => Some(event),
            _ => None,
        })
        .collect()
}

fn sends(ds: &[Decision]) -> Vec<(&str, &Plan)> {
    ds.iter()
        .filter_map(|d| match d {
            Decision::Send { charger, plan } => Some((charger.as_str(), plan)),
            _ => None,
        })
        .collect()
}

#[test]
fn median_of_nothing_is_none_and_of_some_the_middle() {
    assert_eq!(median(std::iter::empty()), None);
    assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
    assert_eq!(median([5.0].into_iter()), Some(5.0));
}

/// Regression: with the meter silent, a SIGHUP that lengthens
/// `meter_timeout` makes the same old reading fresh again while the
/// history was cleared; the median then indexed an empty list and the
/// engine task died silently.
#[test]
fn a_meter_timeout_raised_by_sighup_while_the_meter_is_down_does_not_kill_the_engine() {
    let t0 = at("2030-01-07T10:00:00Z");
    let m0 = Instant::now();
    let mut w = World::new(cfg(LOAD));
    w.meter = Some(meter([10.0; 3], t0));
    let mut st = EngineState::new(m0, false);
    let ds = w.round(
        &mut st,
        t0 + SignedDuration::from_secs(1),
        m0 + Duration::from_secs(1),
    );
    assert_eq!(status(&ds).load, "sharing");
    // The meter goes silent: past the timeout, fallback to the safe current.
    let ds = w.round(
        &mut st,
        t0 + SignedDuration::from_secs(40),
        m0 + Duration::from_secs(40),
    );
    assert_eq!(status(&ds).load, "fallback");
    assert_eq!(limit(&ds, "A"), 10.0);
    assert!(journaled(&ds)
        .iter()
        .any(|e| matches!(e, Event::MeterLost { fallback_a, .. } if *fallback_a == 10.0)));
    // SIGHUP: a longer timeout makes the old reading fresh again.
    w.cfg = cfg(&LOAD.replace("meter_timeout_secs = 30", "meter_timeout_secs = 120"));
    let ds = w.round(
        &mut st,
        t0 + SignedDuration::from_secs(41),
        m0 + Duration::from_secs(41),
    );
    assert_eq!(status(&ds).load, "sharing");
    // 40 A fuse, 10 A of house load, nobody charging: 30 A available.
    assert_eq!(status(&ds).available_a, Some(30.0));
}

#[test]
fn the_site_stays_under_its_fuse_when_two_sessions_share_it() {
    let t0 = at("2030-01-07T10:00:00Z");
    let m0 = Instant::now();
    let mut w = World::new(cfg(LOAD));
    w.state
        .chargers
        .insert("A".into(), charging("A", 16.0, t0).into());
    w.state
        .chargers
        .insert("B".into(), charging("B", 16.0, t0).into());
    // The meter sees 12 A of house load plus the chargers' 32 A.
    w.meter = Some(meter([44.0; 3], t0));
    let mut st = EngineState::new(m0, false);
    let ds = w.round(&mut st, t0, m0);
    let avail = status(&ds).available_a.expect("sharing");
    assert_eq!(avail, 28.0, "40 A fuse less 12 A of house load");
    let total = limit(&ds, "A") + limit(&ds, "B");
    assert!(total <= avail, "{total} A shared out of {avail} A");
    assert!(limit(&ds, "A") >= 6.0 && limit(&ds, "B") >= 6.0);
}

#[test]
fn the_meter_lost_after_its_timeout_falls_back_and_its_return_is_journaled() {
    let t0 = at("2030-01-07T10:00:00Z");
    let m0 = Instant::now();
    let mut w = World::new(cfg(LOAD));
    let mut st = EngineState::new(m0, false);
    // No reading at all: the safe current at once, the loss only once the
    // timeout has passed since start.
    let ds = w.round(&mut st, t0, m0 + Duration::from_secs(1));
    assert_eq!(limit(&ds, "A"), 10.0);
    assert!(journaled(&ds)
        .iter()
        .all(|e| !matches!(e, Event::MeterLost { .. })));
    let ds = w.round(&mut st, t0, m0 + Duration::from_secs(31));
    assert_eq!(
        journaled(&ds)
            .iter()
            .filter(|e| matches!(e, Event::MeterLost { .. }))
            .count(),
        1
    );
    let ds = w.round(&mut st, t0, m0 + Duration::from_secs(32));
    assert!(
        journaled(&ds)
            .iter()
            .all(|e| !matches!(e, Event::MeterLost { .. })),
        "a loss is journaled once"
    );
    w.meter = Some(meter([5.0; 3], t0));
    let ds = w.round(&mut st, t0, m0 + Duration::from_secs(33));
    assert!(journaled(&ds)
        .iter()
        .any(|e| matches!(e, Event::MeterRestored { .. })));
    assert_eq!(status(&ds).load, "sharing");
}

const NIGHT: &str = "[[schedule]]\nname = \"night\"\nchargers = [\"*\"]\n\
    [[schedule.window]]\ndays = \"daily\"\nfrom = \"22:00\"\nto = \"06:00\"\n";

#[test]
fn a_wall_clock_that_steps_back_is_followed_both_ways() {
    let m0 = Instant::now();
    let w = World::new(cfg(NIGHT));
    let mut st = EngineState::new(m0, false);
    let ds = w.round(&mut st, at("2030-01-07T23:00:00Z"), m0);
    assert_eq!(limit(&ds, "A"), 32.0, "inside the night window");
    // NTP steps the clock back two hours: outside the window again.
    let ds = w.round(
        &mut st,
        at("2030-01-07T21:00:00Z"),
        m0 + Duration::from_secs(1),
    );
    assert_eq!(limit(&ds, "A"), 0.0);
    assert!(journaled(&ds).iter().any(
        |e| matches!(e, Event::LimitChanged { limit_a, reason } if *limit_a == 0.0 && reason.contains("outside"))
    ));
}

#[test]
fn profiles_go_once_per_change_and_a_refused_one_waits_a_minute() {
    let m0 = Instant::now();
    let now = at("2030-01-07T12:00:00Z");
    let w = World::new(cfg(NIGHT));
    let mut st = EngineState::new(m0, false);
    let ds = w.round(&mut st, now, m0);
    let sent = sends(&ds);
    assert_eq!(sent.len(), 2, "one standing profile per charger: {sent:?}");
    let standing = sent[0].1.standing_key.clone();
    assert!(standing.is_some());
    // In flight: nothing more until it is answered.
    assert!(sends(&w.round(&mut st, now, m0 + Duration::from_secs(1))).is_empty());
    st.on_sent(
        Sent {
            charger: "A".into(),
            standing: standing.clone(),
            live: None,
            ok: true,
        },
        m0 + Duration::from_secs(2),
    );
    st.on_sent(
        Sent {
            charger: "B".into(),
            standing,
            live: None,
            ok: false,
        },
        m0 + Duration::from_secs(2),
    );
    // A has it; B was refused and waits a minute before the next try.
    assert!(sends(&w.round(&mut st, now, m0 + Duration::from_secs(3))).is_empty());
    let later = w.round(&mut st, now, m0 + Duration::from_secs(63));
    let sent = sends(&later);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "B");
}

#[test]
fn a_pause_sends_a_live_zero_and_its_end_clears_it() {
    let m0 = Instant::now();
    let now = at("2030-01-07T12:00:00Z");
    let mut w = World::new(cfg(""));
    let mut st = EngineState::new(m0, true);
    let mut a = ChargerState {
        id: "A".into(),
        ..Default::default()
    };
    a.override_ = Some(Override {
        limit_a: 0.0,
        until: Some("2030-01-07T13:00:00Z".into()),
        by: "api".into(),
        pause: true,
    });
    w.state.chargers.insert("A".into(), a.into());
    let ds = w.round(&mut st, now, m0);
    assert_eq!(limit(&ds, "A"), 0.0);
    let sent = sends(&ds);
    assert_eq!(sent.len(), 1, "B is unmanaged: {sent:?}");
    assert_eq!(sent[0].1.live, Some(LiveChange::Set(0.0)));
    st.on_sent(
        Sent {
            charger: "A".into(),
            standing: None,
            live: Some(LiveChange::Set(0.0)),
            ok: true,
        },
        m0,
    );
    // Past `until`: the live profile is cleared, once.
    let ds = w.round(
        &mut st,
        at("2030-01-07T13:00:01Z"),
        m0 + Duration::from_secs(1),
    );
    let sent = sends(&ds);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.live, Some(LiveChange::Cleared));
    assert_eq!(sent[0].1.calls, vec![json!({ "id": 870002 })]);
}

#[test]
fn an_engine_with_nothing_to_manage_is_idle() {
    let st = EngineState::new(Instant::now(), false);
    assert!(st.idle(&cfg(""), false));
    assert!(!st.idle(&cfg(""), true), "a meter alone keeps it running");
    assert!(!st.idle(&cfg(NIGHT), false));
    assert!(!EngineState::new(Instant::now(), true).idle(&cfg(""), false));
}

#[test]
fn connects_and_boots_delay_profiles_and_transactions_wake_the_engine() {
    let m0 = Instant::now();
    let w = World::new(cfg(NIGHT));
    let mut st = EngineState::new(m0, false);
    let rec = |event| Record {
        seq: 1,
        time_ms: 0,
        charger: Some("A".into()),
        event,
    };
    let boot = rec(Event::Connect {
        link: Link::Charger,
        remote: None,
        protocol: None,
    });
    assert!(!st.on_record(&boot, m0), "a connect waits for the boot");
    let ds = w.round(
        &mut st,
        at("2030-01-07T12:00:00Z"),
        m0 + Duration::from_millis(100),
    );
    assert!(
        sends(&ds).iter().all(|(id, _)| *id != "A"),
        "A's profiles wait half a second for its boot"
    );
    let ds = w.round(
        &mut st,
        at("2030-01-07T12:00:01Z"),
        m0 + Duration::from_millis(600),
    );
    assert!(sends(&ds).iter().any(|(id, _)| *id == "A"));
    let stop = rec(Event::StopTransaction {
        transaction_id: Some(1),
        transaction_ref: None,
        meter_stop: 0,
        reason: None,
        timestamp: "2030-01-07T12:00:02Z".into(),
        answered_by: Source::Charger,
        forced: false,
    });
    assert!(st.on_record(&stop, m0), "a stop is worth a round at once");
}

/// Issue 16: a charger reporting an absurd current made the gateway take
/// the house for 0 A and raise the others past the fuse.
#[test]
fn a_rogue_chargers_absurd_reading_never_raises_anyone_past_the_fuse() {
    let t0 = at("2030-01-07T10:00:00Z");
    let m0 = Instant::now();
    let mut w = World::new(cfg(LOAD));
    // House 10 A; A and B really draw the 10 A (safe current) they were told.
    w.state
        .chargers
        .insert("A".into(), charging("A", 500.0, t0).into());
    w.state
        .chargers
        .insert("B".into(), charging("B", 10.0, t0).into());
    w.meter = Some(meter([30.0; 3], t0));
    let mut st = EngineState::new(m0, false);
    let ds = w.round(&mut st, t0, m0);
    let total = limit(&ds, "A") + limit(&ds, "B");
    let house = 10.0;
    assert!(
        house + total <= 40.0,
        "site at {} A on a 40 A fuse: {:?}",
        house + total,
        status(&ds)
    );
    assert!(
        journaled(&ds).iter().any(
            |e| matches!(e, Event::ProtocolError { code, .. } if code == "ImplausibleMeterValue")
        ),
        "the absurd reading is journaled"
    );
    // Once: not every round.
    let ds = w.round(&mut st, t0, m0 + Duration::from_secs(1));
    assert!(!journaled(&ds)
        .iter()
        .any(|e| matches!(e, Event::ProtocolError { .. })));
}
