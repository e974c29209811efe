//! Unit tests of the session's decisions: frames in, actions out, with
//! injected time and no sockets. A small driver plays the task: it
//! completes each commit at once (or fails it on request) and flattens
//! what the session asks for into [`Seen`] for the assertions.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::*;
use crate::hub::Command;
use crate::outbox::Entry;
use crate::session::inout::CloudMsg;

struct FakeEnv {
    next_tx: Cell<i64>,
    next_key: Cell<u64>,
}

impl Env for FakeEnv {
    fn tag_status(&self, _: &str, _: &str, _: jiff::Timestamp) -> Option<String> {
        None
    }
    fn next_local_tx_id(&self) -> i64 {
        let t = self.next_tx.get();
        self.next_tx.set(t - 1);
        t
    }
    fn transaction_running(&self, _: &str, _: i64) -> bool {
        true
    }
    fn next_outbox_key(&self) -> u64 {
        let k = self.next_key.get() + 1;
        self.next_key.set(k);
        k
    }
}

/// What the session asked for, flattened.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Charger(Value),
    Cloud(Value),
    Journal(String),
    /// The kinds of the operations committed durably.
    Commit(Vec<String>),
    Submit(Vec<String>),
    Reply(CallOutcome),
    Stored(bool),
    OpenCloud,
    Ping,
    /// The close code, and whether the charger's own close is awaited.
    CloseCharger(u16, bool),
    CloseCloud,
    Stop,
}

fn op_kind(op: &Op) -> String {
    match op {
        Op::Event { event, .. } => format!("event:{}", event.kind()),
        Op::Outbox(o) => match o {
            outbox::Op::Push { entry, .. } => format!("push:{}", entry.action),
            outbox::Op::Update { entry, .. } => {
                format!("update:{}:{}", entry.action, entry.attempts)
            }
            outbox::Op::Remove { .. } => "remove".into(),
            outbox::Op::Kill { .. } => "kill".into(),
            outbox::Op::MapTx { local, cloud, .. } => format!("map:{local}->{cloud}"),
        },
        Op::Auth(_) => "auth".into(),
    }
}

struct Driver {
    s: SessionState<&'static str>,
    t0: Instant,
    wall0: jiff::Timestamp,
    /// Seconds since the start: the injected time.
    at: Duration,
    next_key: u64,
    fail_commits: bool,
}

/// `offline`: more keys of the `[offline]` section.
fn config(offline: &str) -> Arc<Config> {
    let text = format!(
        "[ocpp]\nping_interval_secs = 0\ncall_timeout_secs = 30\n\
         [offline]\ntransaction_message_attempts = 3\n\
         transaction_message_retry_interval_secs = 10\n{offline}"
    );
    Arc::new(Config::parse(&text, "t.toml").expect("test config parses"))
}

fn entry(action: &str, payload: Value, local_tx: Option<i64>) -> Entry {
    Entry {
        action: action.into(),
        payload: payload.to_string(),
        queued_ms: 0,
        attempts: 0,
        local_tx,
    }
}

impl Driver {
    /// A session with a cloud (`ws://cloud/CP1`), started, its link still
    /// connecting.
    fn with_cloud(outbox: Vec<(u64, Entry)>, tx_map: Vec<(i64, i64)>) -> Driver {
        Driver::new(Some("ws://cloud/CP1"), outbox, tx_map)
    }

    fn new(cloud: Option<&str>, outbox: Vec<(u64, Entry)>, tx_map: Vec<(i64, i64)>) -> Driver {
        Driver::configured(cloud, outbox, tx_map, "")
    }

    fn configured(
        cloud: Option<&str>,
        outbox: Vec<(u64, Entry)>,
        tx_map: Vec<(i64, i64)>,
        offline: &str,
    ) -> Driver {
        Driver::speaking(Protocol::Ocpp16, cloud, outbox, tx_map, offline)
    }

    fn speaking(
        proto: Protocol,
        cloud: Option<&str>,
        outbox: Vec<(u64, Entry)>,
        tx_map: Vec<(i64, i64)>,
        offline: &str,
    ) -> Driver {
        let setup = Setup {
            id: "CP1".into(),
            proto,
            cfg: config(offline),
            cloud_url: cloud.map(str::to_string),
            backoff: Some(Backoff::new(Duration::from_secs(1), Duration::from_secs(1))),
            outbox,
            tx_map,
        };
        let env = Box::new(FakeEnv {
            next_tx: Cell::new(-1),
            next_key: Cell::new(1000),
        });
        let t0 = Instant::now();
        let wall0: jiff::Timestamp = "2030-01-07T10:00:00Z".parse().expect("a time");
        let now = Now {
            mono: t0,
            wall: wall0,
        };
        let mut d = Driver {
            s: SessionState::new(setup, env, now),
            t0,
            wall0,
            at: Duration::ZERO,
            next_key: 100,
            fail_commits: false,
        };
        let seen = d.feed(Input::Start {
            remote: "10.0.0.9:5000".into(),
        });
        assert_eq!(seen[0], Seen::Journal("Connect".into()));
        d
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t0 + self.at,
            wall: self.wall0 + jiff::SignedDuration::try_from(self.at).expect("small"),
        }
    }

    /// Feed one input and play the task: commits complete at once.
    fn feed(&mut self, input: Input<&'static str>) -> Vec<Seen> {
        let mut queue: std::collections::VecDeque<_> = self.s.handle(input, self.now()).into();
        let mut seen = Vec::new();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::ToCharger(t) => seen.push(Seen::Charger(parse(&t))),
                Action::ToCloud(t) => seen.push(Seen::Cloud(parse(&t))),
                Action::Ping => seen.push(Seen::Ping),
                Action::Journal(ev) => seen.push(Seen::Journal(ev.kind().into())),
                Action::Commit { ops, then } => {
                    seen.push(Seen::Commit(ops.iter().map(op_kind).collect()));
                    let res = if self.fail_commits {
                        Err(crate::journal::JournalError::Closed)
                    } else {
                        Ok(ops
                            .iter()
                            .map(|_| {
                                self.next_key += 1;
                                self.next_key
                            })
                            .collect())
                    };
                    let follow = self.s.handle(Input::Committed(then, res), self.now());
                    for f in follow.into_iter().rev() {
                        queue.push_front(f);
                    }
                }
                Action::Submit(ops) => seen.push(Seen::Submit(ops.iter().map(op_kind).collect())),
                Action::Reply(_, o) => seen.push(Seen::Reply(o)),
                Action::Stored(_, ok) => seen.push(Seen::Stored(ok)),
                Action::OpenCloud => seen.push(Seen::OpenCloud),
                Action::CloseCharger(code, _, wait) => {
                    seen.push(Seen::CloseCharger(code.into(), wait))
                }
                Action::CloseCloud(_) => seen.push(Seen::CloseCloud),
                Action::Stop => seen.push(Seen::Stop),
            }
        }
        seen
    }

    fn charger(&mut self, frame: Value) -> Vec<Seen> {
        self.feed(Input::Charger(ChargerMsg::Text(frame.to_string().into())))
    }

    fn cloud(&mut self, frame: Value) -> Vec<Seen> {
        self.feed(Input::Cloud(CloudMsg::Text(frame.to_string().into())))
    }

    fn link_up(&mut self) -> Vec<Seen> {
        let proto = self.s.proto;
        self.feed(Input::Connected(Ok((Box::new("cloud socket"), proto))))
    }

    /// Let time pass to `secs` since the start, and fire the timer if it
    /// is due (as the task's sleep would).
    fn advance(&mut self, secs: f64) -> Vec<Seen> {
        self.at = Duration::from_secs_f64(secs);
        let due = self.s.deadline();
        if due <= self.t0 + self.at {
            self.feed(Input::Timer)
        } else {
            Vec::new()
        }
    }

    fn call(
        &mut self,
        action: &str,
        payload: Value,
    ) -> (Vec<Seen>, oneshot::Receiver<CallOutcome>) {
        let (reply, rx) = oneshot::channel();
        let seen = self.feed(Input::Command(Command::Call {
            action: action.into(),
            payload,
            source: crate::event::Source::Api,
            part_of: None,
            reply,
        }));
        (seen, rx)
    }
}

fn parse(t: &str) -> Value {
    serde_json::from_str(t).expect("the session sends JSON")
}

fn frames_to_charger(seen: &[Seen]) -> Vec<&Value> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Charger(v) => Some(v),
            _ => None,
        })
        .collect()
}

fn frames_to_cloud(seen: &[Seen]) -> Vec<&Value> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Cloud(v) => Some(v),
            _ => None,
        })
        .collect()
}

/// The one CALL sent in `seen` (to either side): (message id, action, payload).
fn only_call(frames: Vec<&Value>) -> (String, String, Value) {
    assert_eq!(frames.len(), 1, "exactly one frame: {frames:?}");
    let f = frames[0];
    assert_eq!(f[0], 2, "a CALL: {f}");
    (
        f[1].as_str().expect("id").to_string(),
        f[2].as_str().expect("action").to_string(),
        f[3].clone(),
    )
}

#[test]
fn one_call_at_a_time_toward_the_charger_the_gateways_and_the_clouds() {
    let mut d = Driver::with_cloud(vec![], vec![]);
    d.link_up();
    let (seen, _rx1) = d.call("TriggerMessage", json!({"requestedMessage": "Heartbeat"}));
    let (id1, action, _) = only_call(frames_to_charger(&seen));
    assert_eq!(action, "TriggerMessage");
    assert!(id1.starts_with("cg-"), "the gateway's own id: {id1}");
    // A second call of ours and one of the cloud's wait for the first answer.
    let (seen, _rx2) = d.call("Reset", json!({"type": "Soft"}));
    assert!(frames_to_charger(&seen).is_empty(), "{seen:?}");
    let seen = d.cloud(json!([2, "c-1", "GetConfiguration", {}]));
    assert!(frames_to_charger(&seen).is_empty(), "{seen:?}");
    // The answer to ours goes to whoever asked, never to the cloud; then
    // our second call goes out, the cloud's still waits.
    let seen = d.charger(json!([3, id1, {"status": "Accepted"}]));
    assert!(seen.contains(&Seen::Reply(CallOutcome::Result(
        json!({"status": "Accepted"})
    ))));
    assert!(frames_to_cloud(&seen).is_empty());
    let (id2, action, _) = only_call(frames_to_charger(&seen));
    assert_eq!(action, "Reset");
    let seen = d.charger(json!([3, id2, {"status": "Accepted"}]));
    let (id3, action, _) = only_call(frames_to_charger(&seen));
    assert_eq!((id3.as_str(), action.as_str()), ("c-1", "GetConfiguration"));
    // The charger's answer to the cloud's call goes to the cloud as is.
    let seen = d.charger(json!([3, "c-1", {"configurationKey": []}]));
    assert_eq!(
        frames_to_cloud(&seen),
        vec![&json!([3, "c-1", {"configurationKey": []}])]
    );
}

#[test]
fn one_call_at_a_time_toward_the_cloud_while_an_outbox_entry_is_out() {
    let start = entry(
        "StartTransaction",
        json!({"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2030-01-07T09:00:00Z"}),
        Some(-1),
    );
    let mut d = Driver::with_cloud(vec![(1, start)], vec![]);
    let seen = d.link_up();
    let (_, action, _) = only_call(frames_to_cloud(&seen));
    assert_eq!(action, "StartTransaction");
    // The replayed entry holds the cloud's CALL slot: a Heartbeat now is
    // answered by the gateway, not relayed.
    let seen = d.charger(json!([2, "h1", "Heartbeat", {}]));
    assert!(frames_to_cloud(&seen).is_empty(), "{seen:?}");
    let answers = frames_to_charger(&seen);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0][0], 3);
    assert_eq!(answers[0][1], "h1");
    assert!(answers[0][2]["currentTime"].is_string());
}

#[test]
fn a_silent_cloud_is_answered_locally_after_the_call_timeout_and_its_late_answer_dropped() {
    let mut d = Driver::with_cloud(vec![], vec![]);
    d.link_up();
    let seen = d.charger(
        json!([2, "b1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]),
    );
    assert_eq!(frames_to_cloud(&seen).len(), 1, "relayed: {seen:?}");
    assert!(frames_to_charger(&seen).is_empty());
    for s in 1..30 {
        let seen = d.advance(s as f64);
        assert!(frames_to_charger(&seen).is_empty(), "at {s} s: {seen:?}");
    }
    let seen = d.advance(30.0);
    // Stored first, then answered under the charger's own id.
    let commit = seen
        .iter()
        .position(|s| matches!(s, Seen::Commit(ops) if ops.contains(&"event:BootNotification".to_string())))
        .expect("the boot is committed");
    let answer = seen
        .iter()
        .position(|s| matches!(s, Seen::Charger(v) if v[1] == "b1"))
        .expect("the charger is answered");
    assert!(commit < answer, "{seen:?}");
    let Seen::Charger(v) = &seen[answer] else {
        unreachable!()
    };
    assert_eq!(v[2]["status"], "Accepted");
    // The cloud's answer, a second too late, is not relayed a second time.
    d.at = Duration::from_secs(31);
    let seen = d.cloud(json!([3, "b1", {"status": "Accepted", "currentTime": "2030-01-07T10:00:31Z", "interval": 300}]));
    assert!(frames_to_charger(&seen).is_empty(), "{seen:?}");
    assert!(seen.contains(&Seen::Journal("ProtocolError".into())));
}

#[test]
fn the_gateways_own_calls_to_a_2_0_1_charger_carry_uuids() {
    let mut d = Driver::speaking(
        Protocol::Ocpp201,
        Some("ws://cloud/CP1"),
        vec![],
        vec![],
        "",
    );
    d.link_up();
    let (seen, _rx) = d.call("Reset", json!({"type": "OnIdle"}));
    let (id, action, _) = only_call(frames_to_charger(&seen));
    assert_eq!(action, "Reset");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(id.matches('-').count(), 4, "a UUID: {id}");
}

#[test]
fn where_the_gateway_cannot_answer_late_answers_are_relayed_both_ways() {
    // A 2.0.1 charger's call: the gateway cannot answer it, so it waits for
    // the cloud past the call timeout, and the late answer reaches it.
    let mut d = Driver::speaking(
        Protocol::Ocpp201,
        Some("ws://cloud/CP1"),
        vec![],
        vec![],
        "",
    );
    d.link_up();
    let seen = d.charger(json!([2, "g1", "Heartbeat", {}]));
    assert_eq!(frames_to_cloud(&seen).len(), 1, "{seen:?}");
    for s in 1..=40 {
        let seen = d.advance(s as f64);
        assert!(frames_to_charger(&seen).is_empty(), "at {s} s: {seen:?}");
    }
    let late = json!([3, "g1", {"currentTime": "2030-01-07T10:00:41Z"}]);
    let seen = d.cloud(late.clone());
    assert_eq!(frames_to_charger(&seen), vec![&late], "relayed late");
    assert!(
        !seen.contains(&Seen::Journal("ProtocolError".into())),
        "{seen:?}"
    );

    // The cloud's call a charger answers late (1.6 or 2.0.1 alike: the
    // gateway never answers for the charger): the timeout is journaled and
    // frees the charger for the gateway's own calls, and the late answer
    // still reaches the cloud.
    let mut d = Driver::with_cloud(vec![], vec![]);
    d.link_up();
    let seen = d.cloud(json!([2, "k1", "GetConfiguration", {}]));
    assert_eq!(frames_to_charger(&seen).len(), 1);
    let (seen, _rx) = d.call("TriggerMessage", json!({"requestedMessage": "Heartbeat"}));
    assert!(
        frames_to_charger(&seen).is_empty(),
        "one call at a time: {seen:?}"
    );
    let seen = d.advance(30.0);
    assert!(
        seen.contains(&Seen::Journal("RemoteAction".into())),
        "the timeout is journaled: {seen:?}"
    );
    let (_, action, _) = only_call(frames_to_charger(&seen));
    assert_eq!(action, "TriggerMessage", "the gateway's call goes out");
    let late = json!([3, "k1", {"configurationKey": []}]);
    let seen = d.charger(late.clone());
    assert_eq!(frames_to_cloud(&seen), vec![&late], "relayed late");
    assert!(seen.contains(&Seen::Journal("RemoteAction".into())));
    assert!(
        !seen.contains(&Seen::Journal("ProtocolError".into())),
        "{seen:?}"
    );
}

#[test]
fn replay_sends_three_messages_in_order_and_retries_a_refused_one() {
    let start = entry(
        "StartTransaction",
        json!({"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2030-01-07T09:00:00Z"}),
        Some(-1),
    );
    let meter = entry(
        "MeterValues",
        json!({"connectorId": 1, "transactionId": -1, "meterValue": [{"timestamp": "2030-01-07T09:01:00Z", "sampledValue": [{"value": "5"}]}]}),
        None,
    );
    let stop = entry(
        "StopTransaction",
        json!({"transactionId": -1, "meterStop": 9, "timestamp": "2030-01-07T09:02:00Z"}),
        None,
    );
    let mut d = Driver::with_cloud(vec![(1, start), (2, meter), (3, stop)], vec![]);
    let seen = d.link_up();
    let (id, action, payload) = only_call(frames_to_cloud(&seen));
    assert_eq!(action, "StartTransaction");
    assert!(id.starts_with("cg-r1-"), "the gateway's replay id: {id}");
    assert!(payload.get("transactionId").is_none());
    // The cloud hands out its id; the mapping and the removal are on disk
    // before the next entry goes (a crash repeats at most one message).
    let seen = d.cloud(json!([3, id, {"transactionId": 77, "idTagInfo": {"status": "Accepted"}}]));
    let stored = seen
        .iter()
        .position(
            |s| matches!(s, Seen::Commit(ops) if ops.contains(&"remove".to_string()) && ops.contains(&"map:-1->77".to_string())),
        )
        .unwrap_or_else(|| panic!("removal and mapping committed: {seen:?}"));
    let next = seen
        .iter()
        .position(|s| matches!(s, Seen::Cloud(_)))
        .expect("the next entry goes");
    assert!(stored < next, "{seen:?}");
    assert!(
        frames_to_charger(&seen).is_empty(),
        "replay answers are the gateway's"
    );
    let (id, action, payload) = only_call(frames_to_cloud(&seen));
    assert_eq!(action, "MeterValues");
    assert_eq!(payload["transactionId"], 77, "rewritten to the cloud's id");
    // Refused: counted, and not sent again before the retry interval.
    d.at = Duration::from_secs(1);
    let seen = d.cloud(json!([4, id, "InternalError", "try later", {}]));
    assert!(seen.contains(&Seen::Commit(vec![
        "update:MeterValues:1".into(),
        "event:ReplayRetry".into()
    ])));
    assert!(frames_to_cloud(&seen).is_empty());
    for s in 2..11 {
        let seen = d.advance(s as f64);
        assert!(frames_to_cloud(&seen).is_empty(), "at {s} s: {seen:?}");
    }
    let seen = d.advance(11.0);
    let (id, action, payload) = only_call(frames_to_cloud(&seen));
    assert_eq!(action, "MeterValues");
    assert_eq!(payload["transactionId"], 77);
    let seen = d.cloud(json!([3, id, {}]));
    let (id, action, payload) = only_call(frames_to_cloud(&seen));
    assert_eq!(action, "StopTransaction");
    assert_eq!(payload["transactionId"], 77);
    let seen = d.cloud(json!([3, id, {}]));
    assert!(
        frames_to_cloud(&seen).is_empty(),
        "all three delivered: {seen:?}"
    );
    assert!(d.s.outbox.is_empty());
}

#[test]
fn transaction_ids_are_rewritten_both_ways() {
    let mut d = Driver::with_cloud(vec![], vec![(-1, 77)]);
    d.link_up();
    // Down: the cloud names its id, the charger gets its own.
    let seen = d.cloud(json!([2, "c-9", "RemoteStopTransaction", {"transactionId": 77}]));
    assert_eq!(
        frames_to_charger(&seen),
        vec![&json!([2, "c-9", "RemoteStopTransaction", {"transactionId": -1}])]
    );
    d.charger(json!([3, "c-9", {"status": "Accepted"}]));
    // Up: relayed at once under the charger's id with the cloud's
    // transaction id, and not stored (the charger holds it until answered).
    let seen = d.charger(json!([2, "m1", "MeterValues", {"connectorId": 1, "transactionId": -1, "meterValue": [{"timestamp": "2030-01-07T10:00:00Z", "sampledValue": [{"value": "7"}]}]}]));
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::Commit(_))),
        "{seen:?}"
    );
    let (id, action, payload) = only_call(frames_to_cloud(&seen));
    assert_eq!((id.as_str(), action.as_str()), ("m1", "MeterValues"));
    assert_eq!(payload["transactionId"], 77);
    // The cloud's answer reaches the charger unchanged, and the entry leaves.
    let seen = d.cloud(json!([3, "m1", {}]));
    assert_eq!(frames_to_charger(&seen), vec![&json!([3, "m1", {}])]);
    assert!(d.s.outbox.is_empty());
}

#[test]
fn after_an_outage_the_cloud_gets_the_missed_boot_first_and_the_latest_status_last() {
    let mut d = Driver::with_cloud(vec![], vec![]);
    d.link_up();
    let seen = d.feed(Input::Cloud(CloudMsg::Closed(Some((
        1001,
        "going away".into(),
    )))));
    assert!(seen.contains(&Seen::Journal("Disconnect".into())));
    // Offline: the gateway answers boot and statuses, after storing them.
    let seen = d.charger(
        json!([2, "b1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]),
    );
    assert_eq!(frames_to_charger(&seen)[0][2]["status"], "Accepted");
    for status in ["Preparing", "Available"] {
        let seen = d.charger(json!([2, status, "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": status}]));
        assert_eq!(frames_to_charger(&seen)[0][1], status);
    }
    let seen = d.charger(json!([2, "s2", "StatusNotification", {"connectorId": 2, "errorCode": "NoError", "status": "Faulted"}]));
    assert_eq!(frames_to_charger(&seen).len(), 1);
    // The retry (1 s backoff) opens the link again.
    let seen = d.advance(1.0);
    assert!(seen.contains(&Seen::OpenCloud), "{seen:?}");
    let seen = d.link_up();
    let (id, action, payload) = only_call(frames_to_cloud(&seen));
    assert_eq!(action, "BootNotification");
    assert_eq!(payload["chargePointVendor"], "V");
    let seen = d.cloud(json!([3, id, {"status": "Accepted", "currentTime": "2030-01-07T10:00:01Z", "interval": 300}]));
    let (id, action, payload) = only_call(frames_to_cloud(&seen));
    assert_eq!(action, "StatusNotification");
    assert_eq!(
        (payload["connectorId"].clone(), payload["status"].clone()),
        (json!(1), json!("Available"))
    );
    let seen = d.cloud(json!([3, id, {}]));
    let (id, _, payload) = only_call(frames_to_cloud(&seen));
    assert_eq!(payload["status"], "Faulted");
    let seen = d.cloud(json!([3, id, {}]));
    assert!(frames_to_cloud(&seen).is_empty(), "nothing more: {seen:?}");
    assert!(seen.contains(&Seen::Journal("Replayed".into())));
}

#[test]
fn a_charger_replaced_mid_call_ends_the_session_and_tells_everyone_who_waits() {
    let mut d = Driver::with_cloud(vec![], vec![]);
    d.link_up();
    let (seen, _rx) = d.call("Reset", json!({"type": "Soft"}));
    assert_eq!(frames_to_charger(&seen).len(), 1);
    let (_, _rx2) = d.call("UnlockConnector", json!({"connectorId": 1}));
    let seen = d.feed(Input::Command(Command::Replace));
    assert_eq!(
        seen,
        vec![
            Seen::Journal("Disconnect".into()),
            // The replaced connection is not waited for: the new one waits
            // for it to end.
            Seen::CloseCharger(1000, false),
            Seen::CloseCloud,
            Seen::Journal("Disconnect".into()),
            Seen::Reply(CallOutcome::Disconnected),
            Seen::Reply(CallOutcome::Disconnected),
            Seen::Stop,
        ]
    );
    assert!(
        d.s.cloud_mut().is_none(),
        "the cloud socket went with the session"
    );
}

#[test]
fn nothing_is_acknowledged_that_could_not_be_stored() {
    let mut d = Driver::new(None, vec![], vec![]);
    d.fail_commits = true;
    let seen = d.charger(json!([2, "s1", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2030-01-07T10:00:00Z"}]));
    let answers = frames_to_charger(&seen);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0][0], 4, "a CALLERROR, not an acceptance: {seen:?}");
    assert_eq!(answers[0][2], "InternalError");
    d.fail_commits = false;
    let seen = d.charger(json!([2, "s2", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2030-01-07T10:00:00Z"}]));
    let answers = frames_to_charger(&seen);
    assert_eq!(answers[0][0], 3);
    assert!(
        answers[0][2]["transactionId"]
            .as_i64()
            .is_some_and(|t| t < 0),
        "a local id: {seen:?}"
    );
}

#[test]
fn the_first_frames_wait_for_the_first_cloud_connection() {
    let mut d = Driver::with_cloud(vec![], vec![]);
    assert!(d.s.holds_charger());
    d.link_up();
    assert!(!d.s.holds_charger());
}

#[test]
fn a_cloud_that_chooses_another_offered_protocol_has_the_charger_reconnect() {
    // The charger was given 1.6 while the cloud had not answered; the cloud
    // then takes the charger's other offer, 2.0.1.
    let mut d = Driver::with_cloud(vec![], vec![]);
    let seen = d.feed(Input::Connected(Ok((
        Box::new("cloud socket"),
        Protocol::Ocpp201,
    ))));
    assert!(seen.contains(&Seen::CloseCloud), "{seen:?}");
    let close = seen
        .iter()
        .find_map(|s| match s {
            Seen::CloseCharger(code, _) => Some(*code),
            _ => None,
        })
        .expect("the charger is closed");
    assert_eq!(close, 1012, "service restart: reconnect");
    assert_eq!(seen.last(), Some(&Seen::Stop));
    // The same choice is a link like any other.
    let mut d = Driver::with_cloud(vec![], vec![]);
    let seen = d.link_up();
    assert!(!seen.contains(&Seen::CloseCloud), "{seen:?}");
    assert!(seen.contains(&Seen::Journal("Connect".into())), "{seen:?}");
}

#[test]
fn a_flood_over_the_rate_is_refused_and_then_closed() {
    let mut d = Driver::new(None, vec![], vec![]);
    let burst = d.s.cfg.ocpp.rate_burst as usize;
    for i in 0..burst {
        d.charger(json!([2, format!("h{i}"), "Heartbeat", {}]));
    }
    let seen = d.charger(json!([2, "over", "Heartbeat", {}]));
    let answers = frames_to_charger(&seen);
    assert_eq!(answers[0][0], 4);
    assert_eq!(answers[0][2], "GenericError");
    let mut closed = None;
    for i in 0..burst + 2 {
        let seen = d.charger(json!([2, format!("x{i}"), "Heartbeat", {}]));
        if seen.contains(&Seen::Stop) {
            closed = Some(seen);
            break;
        }
    }
    let closed = closed.expect("a charger that keeps flooding is closed");
    assert!(
        closed.contains(&Seen::CloseCharger(1008, true)),
        "a live charger's close is awaited: {closed:?}"
    );
}

#[test]
fn a_queued_transaction_message_waits_for_the_relayed_call_to_be_answered() {
    let mut d = Driver::with_cloud(vec![], vec![]);
    d.link_up();
    let seen = d.charger(json!([2, "h1", "Heartbeat", {}]));
    assert_eq!(frames_to_cloud(&seen).len(), 1);
    // The cloud's CALL slot is taken by h1: the StartTransaction is queued
    // and answered by the gateway with a local id.
    let seen = d.charger(json!([2, "s1", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2030-01-07T10:00:00Z"}]));
    assert!(frames_to_cloud(&seen).is_empty(), "{seen:?}");
    assert!(frames_to_charger(&seen)[0][2]["transactionId"]
        .as_i64()
        .is_some_and(|t| t < 0));
    // Housekeeping does not send it while h1 is out...
    let seen = d.advance(1.0);
    assert!(frames_to_cloud(&seen).is_empty(), "{seen:?}");
    // ...the cloud's answer to h1 frees the slot.
    let seen = d.cloud(json!([3, "h1", {"currentTime": "2030-01-07T10:00:01Z"}]));
    assert_eq!(
        frames_to_charger(&seen),
        vec![&json!([3, "h1", {"currentTime": "2030-01-07T10:00:01Z"}])]
    );
    let (id, action, _) = only_call(frames_to_cloud(&seen));
    assert_eq!(action, "StartTransaction");
    assert!(
        id.starts_with("cg-r"),
        "replayed under the gateway's id: {id}"
    );
}

fn meter_values(id: &str, tx: i64) -> Value {
    json!([2, id, "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [{"timestamp": "2030-01-07T10:00:00Z", "sampledValue": [{"value": "7"}]}]}])
}

#[test]
fn online_a_transaction_message_is_stored_only_when_the_gateway_answers_it_itself() {
    let mut d = Driver::with_cloud(vec![], vec![]);
    d.link_up();
    let seen = d.charger(meter_values("m1", 5));
    assert_eq!(frames_to_cloud(&seen).len(), 1);
    assert!(
        !seen
            .iter()
            .any(|s| matches!(s, Seen::Commit(_) | Seen::Submit(_))),
        "relayed, nothing written: {seen:?}"
    );
    // The cloud stays silent past the call timeout: now the gateway
    // vouches, so the entry is stored durably before the answer leaves.
    let seen = d.advance(30.0);
    let stored = seen
        .iter()
        .position(
            |s| matches!(s, Seen::Commit(ops) if ops.contains(&"push:MeterValues".to_string())),
        )
        .unwrap_or_else(|| panic!("stored: {seen:?}"));
    let answered = seen
        .iter()
        .position(|s| matches!(s, Seen::Charger(v) if v[0] == 3 && v[1] == "m1"))
        .unwrap_or_else(|| panic!("answered: {seen:?}"));
    assert!(stored < answered, "{seen:?}");
    assert_eq!(d.s.outbox.len(), 1, "queued for replay");
    // Answered within the timeout instead, nothing is written at all.
    let mut d = Driver::with_cloud(vec![], vec![]);
    d.link_up();
    d.charger(meter_values("m2", 5));
    let seen = d.cloud(json!([3, "m2", {}]));
    assert_eq!(frames_to_charger(&seen), vec![&json!([3, "m2", {}])]);
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::Commit(_))),
        "{seen:?}"
    );
    assert!(d.s.outbox.is_empty());
}

#[test]
fn an_entry_the_gateway_cannot_store_when_vouching_is_refused_and_forgotten() {
    let mut d = Driver::with_cloud(vec![], vec![]);
    d.link_up();
    d.charger(meter_values("m1", 5));
    d.fail_commits = true;
    let seen = d.feed(Input::Cloud(CloudMsg::Lost("connection reset".into())));
    let answers = frames_to_charger(&seen);
    assert_eq!(answers.len(), 1, "{seen:?}");
    assert_eq!(
        answers[0][0], 4,
        "an error, so the charger keeps it: {seen:?}"
    );
    assert!(d.s.outbox.is_empty(), "not replayed later from memory");
}

#[test]
fn a_full_outbox_refuses_new_transaction_messages_and_keeps_the_queued_ones() {
    let queued: Vec<(u64, Entry)> = (1..=10)
        .map(|k| {
            (
                k,
                entry(
                    "MeterValues",
                    json!({"connectorId": 1, "transactionId": 77, "meterValue": []}),
                    None,
                ),
            )
        })
        .collect();
    let mut d = Driver::configured(
        Some("ws://cloud/CP1"),
        queued,
        vec![],
        "max_queued_messages = 10\n",
    );
    let seen = d.charger(meter_values("m1", 77));
    let answers = frames_to_charger(&seen);
    assert_eq!(answers.len(), 1, "{seen:?}");
    assert_eq!(
        answers[0][0], 4,
        "refused, so the charger keeps it: {seen:?}"
    );
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::Commit(_))),
        "nothing stored: {seen:?}"
    );
    assert_eq!(d.s.outbox.len(), 10, "nothing queued was dropped");
    // Below the cap the gateway queues again.
    let mut d = Driver::configured(
        Some("ws://cloud/CP1"),
        vec![],
        vec![],
        "max_queued_messages = 10\n",
    );
    let seen = d.charger(meter_values("m2", 77));
    assert_eq!(frames_to_charger(&seen)[0][0], 3, "{seen:?}");
    assert_eq!(d.s.outbox.len(), 1);
}

fn tx_event(seq: i64, kind: &str, extra: Value) -> Value {
    let mut v = json!({"eventType": kind, "timestamp": "2030-01-07T09:00:00Z",
        "triggerReason": "MeterValuePeriodic", "seqNo": seq,
        "transactionInfo": {"transactionId": "tx-1"}, "evse": {"id": 1, "connectorId": 1}});
    for (k, x) in extra.as_object().expect("an object") {
        v[k] = x.clone();
    }
    v
}

#[test]
fn a_201_charger_held_offline_is_answered_in_201_and_its_events_replayed_in_order() {
    let mut d = Driver::speaking(
        Protocol::Ocpp201,
        Some("ws://cloud/CP1"),
        vec![],
        vec![],
        "mode_ocpp201 = \"hold\"",
    );
    d.link_up();
    let seen = d.feed(Input::Cloud(CloudMsg::Closed(Some((
        1001,
        "going away".into(),
    )))));
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::CloseCharger(..))),
        "held, not closed: {seen:?}"
    );
    let seen = d.charger(json!([2, "b1", "BootNotification",
        {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}]));
    let answer = frames_to_charger(&seen)[0];
    assert_eq!(
        (answer[0].clone(), answer[2]["status"].clone()),
        (json!(3), json!("Accepted"))
    );
    let seen = d.charger(json!([2, "s1", "StatusNotification",
        {"timestamp": "2030-01-07T09:00:00Z", "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}]));
    assert_eq!(frames_to_charger(&seen)[0], &json!([3, "s1", {}]));
    // The transaction: each event stored before it is answered.
    let events = [
        tx_event(
            0,
            "Started",
            json!({"triggerReason": "Authorized",
            "idToken": {"idToken": "TAG", "type": "ISO14443"},
            "transactionInfo": {"transactionId": "tx-1", "chargingState": "Charging"}}),
        ),
        tx_event(
            1,
            "Updated",
            json!({"meterValue": [{"timestamp": "2030-01-07T09:01:00Z",
            "sampledValue": [{"value": 150.0}]}]}),
        ),
        tx_event(
            2,
            "Ended",
            json!({"triggerReason": "StopAuthorized",
            "transactionInfo": {"transactionId": "tx-1", "stoppedReason": "Local"}}),
        ),
    ];
    for (k, ev) in events.iter().enumerate() {
        let seen = d.charger(json!([2, format!("t{k}"), "TransactionEvent", ev]));
        let commit = seen
            .iter()
            .position(|s| matches!(s, Seen::Commit(ops) if ops.contains(&"push:TransactionEvent".to_string())))
            .unwrap_or_else(|| panic!("queued durably: {seen:?}"));
        let answered = seen
            .iter()
            .position(|s| matches!(s, Seen::Charger(_)))
            .expect("answered");
        assert!(commit < answered, "stored, then answered: {seen:?}");
        let a = frames_to_charger(&seen)[0];
        assert_eq!(a[0], 3, "{a}");
        if k == 0 {
            assert_eq!(a[2]["idTokenInfo"]["status"], "Accepted", "{a}");
        } else {
            assert_eq!(a[2], json!({}), "no idToken, no idTokenInfo");
        }
    }
    assert!(d.s.outbox.len() == 3);
    // The link returns: the missed boot, the events in order and marked
    // offline, then the latest status.
    d.advance(1.0);
    let seen = d.link_up();
    let (id, action, _) = only_call(frames_to_cloud(&seen));
    assert_eq!(action, "BootNotification");
    let mut seen = d.cloud(json!([3, id, {"status": "Accepted", "currentTime": "2030-01-07T10:00:01Z", "interval": 300}]));
    for (k, ev) in events.iter().enumerate() {
        let (id, action, payload) = only_call(frames_to_cloud(&seen));
        assert_eq!(action, "TransactionEvent");
        let mut want = ev.clone();
        want["offline"] = json!(true);
        assert_eq!(payload, want, "event {k}: as sent, in order, offline");
        seen = d.cloud(json!([3, id, {}]));
    }
    let (id, action, payload) = only_call(frames_to_cloud(&seen));
    assert_eq!(
        (action.as_str(), &payload["connectorStatus"]),
        ("StatusNotification", &json!("Occupied"))
    );
    let seen = d.cloud(json!([3, id, {}]));
    assert!(frames_to_cloud(&seen).is_empty(), "nothing more: {seen:?}");
    assert!(d.s.outbox.is_empty());
}

#[test]
fn a_201_charger_in_disconnect_mode_is_closed_when_the_cloud_goes() {
    let mut d = Driver::speaking(
        Protocol::Ocpp201,
        Some("ws://cloud/CP1"),
        vec![],
        vec![],
        "",
    );
    d.link_up();
    let seen = d.feed(Input::Cloud(CloudMsg::Closed(Some((
        1001,
        "going away".into(),
    )))));
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::CloseCharger(1013, _))),
        "the default for 2.0.1: {seen:?}"
    );
}

#[test]
fn a_201_charger_standalone_is_answered_by_the_gateway() {
    let mut d = Driver::speaking(Protocol::Ocpp201, None, vec![], vec![], "");
    let seen = d.charger(json!([2, "h1", "Heartbeat", {}]));
    let a = frames_to_charger(&seen)[0];
    assert_eq!((a[0].clone(), a[1].clone()), (json!(3), json!("h1")), "{a}");
    assert!(a[2]["currentTime"].is_string());
    let seen = d.charger(json!([2, "x1", "TransactionEvent", {"seqNo": "zero"}]));
    let a = frames_to_charger(&seen)[0];
    assert_eq!(a[0], 4, "{a}");
    assert!(
        a[2] == "TypeConstraintViolation" || a[2] == "OccurrenceConstraintViolation",
        "the 2.0.1 code from its schema: {a}"
    );
}

#[test]
fn a_201_offline_transaction_whose_token_the_cloud_refuses_is_stopped() {
    let mut d = Driver::speaking(
        Protocol::Ocpp201,
        Some("ws://cloud/CP1"),
        vec![],
        vec![],
        "mode_ocpp201 = \"hold\"",
    );
    d.link_up();
    d.feed(Input::Cloud(CloudMsg::Closed(None)));
    let started = tx_event(
        0,
        "Started",
        json!({"idToken": {"idToken": "STOLEN", "type": "ISO14443"}}),
    );
    let seen = d.charger(json!([2, "t0", "TransactionEvent", started]));
    assert_eq!(
        frames_to_charger(&seen)[0][2]["idTokenInfo"]["status"],
        "Accepted"
    );
    d.advance(1.0);
    let seen = d.link_up();
    let (id, action, _) = only_call(frames_to_cloud(&seen));
    assert_eq!(action, "TransactionEvent");
    let seen = d.cloud(json!([3, id, {"idTokenInfo": {"status": "Blocked"}}]));
    let (_, action, payload) = only_call(frames_to_charger(&seen));
    assert_eq!(
        (action.as_str(), payload),
        ("RequestStopTransaction", json!({"transactionId": "tx-1"}))
    );
}
