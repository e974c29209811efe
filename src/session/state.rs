//! One charger's session as a state machine, with no I/O: no sockets, no
//! journal handle, no clock reads (the shape of rumqttc's `state.rs`).
//! [`SessionState::handle`] takes an [`Input`] — a frame from the charger
//! or the cloud, a link event, a finished commit, a timer, a command — and
//! the time, and returns the [`Action`]s that the task in `mod.rs` carries
//! out in order: frames to send, records to commit, replies, a connection
//! to open, the end of the session.
//!
//! Here: the state and the charger's frames (`on_charger_text`: relay, or
//! answer locally). Beside it, one `impl` each: local answers and what
//! follows a commit (`answer.rs`), the cloud's frames and the calls toward the charger
//! under the one-CALL rule (`cloud.rs`), the outbox in flight, its replay
//! and id rewriting (`replay.rs`), the resync after an outage
//! (`resync.rs`), the cloud link, timeouts and pings (`link.rs`). The
//! vocabulary of inputs and actions is in `inout.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::inout::{
    Action, ChargerMsg, CloudLink, End, Env, InFlight, Input, Now, PendingDown, PendingUp, Queue,
    Queued, Resync, Setup, Then,
};
use crate::clock::format_ms;
use crate::config::Config;
use crate::event::{self, Event, Link, Source};
use crate::hub::{CallOutcome, Command};
use crate::journal::Op;
use crate::ocpp::frame::{self, Frame};
use crate::ocpp::Protocol;
use crate::outbox::{self, Entry};
use crate::upstream::Backoff;

/// How many of the cloud's calls that timed out are remembered, so that
/// their late answers are still relayed.
pub(super) const MAX_LATE: usize = 16;

/// One charger's session: both links' protocol state.
pub struct SessionState<S> {
    pub(super) id: String,
    pub(super) proto: Protocol,
    pub(super) cfg: Arc<Config>,
    pub(super) env: Box<dyn Env>,
    pub(super) cloud_url: Option<String>,
    pub(super) link: CloudLink<S>,
    pub(super) backoff: Option<Backoff>,
    /// The last connect error journaled (the same one is not repeated).
    pub(super) last_connect_error: Option<crate::upstream::ConnectError>,
    pub(super) pending_up: HashMap<String, PendingUp>,
    pub(super) pending_down: HashMap<String, PendingDown>,
    /// The cloud's calls the charger did not answer within the call
    /// timeout: the next call may go out, and a late answer is still
    /// relayed (each side keeps its own timeout). Bounded by [`MAX_LATE`].
    pub(super) late_down: VecDeque<(String, PendingDown)>,
    /// What the journal remembers of running 2.0.1 transactions.
    pub(super) tx_evses: event::TxEvses,
    pub(super) queue_down: VecDeque<Queued>,
    /// Counter for the gateway's own message ids toward the charger.
    pub(super) local_ids: u64,
    /// This charger's queued transaction messages, mirrored from storage.
    pub(super) outbox: VecDeque<(u64, Entry)>,
    /// The key of the outbox entry held in memory only (relayed online
    /// under the charger's id; stored if the gateway has to vouch for it).
    pub(super) unstored: Option<u64>,
    /// The outbox entry with the cloud right now.
    pub(super) in_flight: Option<InFlight>,
    /// No outbox entry goes out before this (retry interval after an error).
    pub(super) outbox_retry_at: Option<Instant>,
    /// Local transaction id → the cloud's, and back.
    pub(super) to_cloud: HashMap<i64, i64>,
    pub(super) to_local: HashMap<i64, i64>,
    /// Offline transactions stopped because the cloud refused their tag.
    pub(super) deauthorized: HashSet<i64>,
    /// Boot and statuses the cloud missed while the gateway answered.
    pub(super) resync: Resync,
    pub(super) last_rx: Instant,
    pub(super) last_ping: Instant,
    /// The charger's message rate (`ocpp.rate_limit_per_sec`).
    pub(super) rate: Option<crate::limits::Rate>,
    /// Protocol errors journaled, by (from the cloud, code).
    pub(super) noise: crate::limits::Repeats<(bool, String)>,
    /// The housekeeping tick: when it last ran and when it runs next.
    pub(super) last_tick: Instant,
    pub(super) tick_at: Instant,
    /// The input's time.
    pub(super) now: Now,
    /// Actions decided while handling the current input.
    pub(super) out: Vec<Action<S>>,
}

/// Calls waiting for the charger or for its answer before the gateway
/// answers new ones from the cloud with "busy" (the cloud's own calls are
/// relayed as they come; a charger that never answers must not make the
/// gateway remember them without bound).
pub(super) const MAX_QUEUED_DOWN: usize = 64;

/// The housekeeping tick's period while something waits on a timeout.
pub(super) const TICK: Duration = Duration::from_secs(1);
/// With nothing waiting and pings off, the tick still runs this often.
pub(super) const IDLE_TICK: Duration = Duration::from_secs(3600);
/// A charger is closed when it has sent nothing, pongs included, for two
/// ping intervals and this long.
pub(super) const PING_GRACE: Duration = Duration::from_secs(5);

impl<S> SessionState<S> {
    /// A session for a charger that just connected, at `now`.
    pub fn new(setup: Setup, env: Box<dyn Env>, now: Now) -> SessionState<S> {
        let cfg = setup.cfg;
        let mut to_cloud = HashMap::new();
        let mut to_local = HashMap::new();
        for (local, cloud) in setup.tx_map {
            to_cloud.insert(local, cloud);
            to_local.insert(cloud, local);
        }
        let t = now.mono;
        SessionState {
            id: setup.id,
            proto: setup.proto,
            env,
            cloud_url: setup.cloud_url,
            link: CloudLink::Standalone,
            backoff: setup.backoff,
            last_connect_error: None,
            pending_up: HashMap::new(),
            pending_down: HashMap::new(),
            late_down: VecDeque::new(),
            tx_evses: event::TxEvses::default(),
            queue_down: VecDeque::new(),
            local_ids: 0,
            outbox: setup.outbox.into(),
            unstored: None,
            in_flight: None,
            outbox_retry_at: None,
            to_cloud,
            to_local,
            deauthorized: HashSet::new(),
            noise: crate::limits::Repeats::default(),
            resync: Resync::default(),
            last_rx: t,
            last_ping: t,
            rate: (cfg.ocpp.rate_per_sec > 0)
                .then(|| crate::limits::Rate::new(cfg.ocpp.rate_per_sec, cfg.ocpp.rate_burst, t)),
            last_tick: t,
            tick_at: t + TICK,
            cfg,
            now,
            out: Vec::new(),
        }
    }

    /// Handle one input at `now`; returns what to do, in order.
    pub fn handle(&mut self, input: Input<S>, now: Now) -> Vec<Action<S>> {
        self.now = now;
        if let Err(end) = self.step(input) {
            self.finish(end);
        }
        std::mem::take(&mut self.out)
    }

    fn step(&mut self, input: Input<S>) -> Result<(), End> {
        match input {
            Input::Start { remote } => {
                self.journal(Event::Connect {
                    link: Link::Charger,
                    remote: Some(remote),
                    protocol: Some(self.proto.as_str().into()),
                });
                if self.cloud_url.is_some() {
                    self.start_connect(true);
                }
                Ok(())
            }
            Input::Charger(msg) => self.on_charger_msg(msg),
            Input::Cloud(msg) => self.on_cloud_msg(msg),
            Input::Connected(res) => self.on_connected(res),
            Input::CloudWriteFailed => self.link_down("write to cloud failed".into(), None, false),
            Input::ChargerWriteFailed(e) => {
                Err(End::new(format!("write to charger failed: {e}"), None))
            }
            Input::Committed(then, res) => self.on_committed(then, res),
            Input::Timer => self.on_timer(),
            Input::Command(Command::Replace) => Err(End::silent(
                "replaced by a new connection",
                CloseCode::Normal,
            )),
            Input::Command(Command::Call {
                action,
                payload,
                source,
                part_of,
                reply,
            }) => {
                self.queue_down.push_back(Queued::Local {
                    action,
                    payload,
                    source,
                    part_of,
                    reply,
                });
                self.pump_down();
                Ok(())
            }
            Input::Command(Command::Enqueue {
                action,
                payload,
                event,
                reply,
            }) => {
                self.enqueue(action, payload, event, reply);
                Ok(())
            }
            Input::Shutdown => Err(End::new(
                "gateway shutting down",
                Some((CloseCode::Away, "gateway shutting down")),
            )),
        }
    }

    /// Whether the charger's frames wait (for the first cloud connection,
    /// so that the cloud gets the BootNotification).
    pub fn holds_charger(&self) -> bool {
        matches!(self.link, CloudLink::Connecting { first: true })
    }

    /// The cloud socket, while the link is up.
    pub fn cloud_mut(&mut self) -> Option<&mut S> {
        match &mut self.link {
            CloudLink::Up(s) => Some(s),
            _ => None,
        }
    }

    /// The event for a 1.6 charger call received now, with how far the
    /// charger's clock is off when the message says what time it is.
    pub(super) fn received_event(
        &self,
        action: &str,
        payload: &RawValue,
        answer: Option<&RawValue>,
        by: Source,
    ) -> Option<Event> {
        event::for_charger_call_at(action, payload, answer, by, Some(self.now.wall))
    }

    pub(super) fn cloud_up(&self) -> bool {
        matches!(self.link, CloudLink::Up(_))
    }

    pub(super) fn journal(&mut self, ev: Event) {
        self.out.push(Action::Journal(ev));
    }

    pub(super) fn send_charger(&mut self, text: impl Into<Utf8Bytes>) {
        self.out.push(Action::ToCharger(text.into()));
    }

    pub(super) fn send_cloud(&mut self, text: impl Into<Utf8Bytes>) {
        self.out.push(Action::ToCloud(text.into()));
    }

    /// Now as RFC 3339 UTC with milliseconds, as OCPP timestamps are written.
    pub(super) fn now_rfc3339(&self) -> String {
        format_ms(self.now.wall)
    }

    pub(super) fn now_ms(&self) -> i64 {
        self.now.unix_ms()
    }

    // ---- charger → gateway ----

    fn on_charger_msg(&mut self, msg: ChargerMsg) -> Result<(), End> {
        self.last_rx = self.now.mono;
        match msg {
            ChargerMsg::Text(t) => {
                if let Some(rate) = &mut self.rate {
                    if !rate.take(self.now.mono) {
                        return self.over_rate(t.as_str());
                    }
                }
                self.on_charger_text(t);
                Ok(())
            }
            ChargerMsg::Binary => {
                // Counted like text frames: a flood of them is no cheaper.
                if let Some(rate) = &mut self.rate {
                    if !rate.take(self.now.mono) {
                        return self.over_rate("");
                    }
                }
                self.protocol_error(
                    Link::Charger,
                    "ProtocolError",
                    "binary frames are not OCPP-J",
                    "",
                );
                Ok(())
            }
            ChargerMsg::Closed(f) => {
                let code = f.as_ref().map(|f| f.0);
                let why = f.map(|f| f.1).filter(|r| !r.is_empty());
                Err(End {
                    code,
                    ..End::new(
                        why.unwrap_or_else(|| "charger closed the connection".into()),
                        None,
                    )
                })
            }
            ChargerMsg::Other => Ok(()),
            ChargerMsg::TooBig(e) => Err(End::new(
                format!("charger sent too large a message: {e}"),
                Some((CloseCode::Size, "message too big")),
            )),
            ChargerMsg::Lost(e) => Err(End::new(e, None)),
        }
    }

    /// A message over the charger's rate: a CALL is answered with a
    /// CALLERROR and not relayed, anything else dropped; one that keeps
    /// flooding is closed with 1008 (policy violation).
    fn over_rate(&mut self, text: &str) -> Result<(), End> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        let (abusive, refused) = (rate.abusive(), rate.refused);
        if abusive {
            return Err(End::new(
                format!("charger kept sending over its message rate ({refused} refused in a row)"),
                Some((CloseCode::Policy, "message rate limit exceeded")),
            ));
        }
        let limit = self.cfg.ocpp.rate_per_sec;
        if refused == 1 {
            self.protocol_error(
                Link::Charger,
                "GenericError",
                &format!("message rate limit exceeded ({limit}/s): not relayed"),
                text,
            );
        }
        if let Ok(Frame::Call { id, .. }) = frame::parse(text) {
            let reply = frame::call_error(
                &id,
                "GenericError",
                &format!("rate limit exceeded ({limit}/s); try again later"),
            );
            self.send_charger(reply);
        }
        Ok(())
    }

    /// Parse a frame from either side. A malformed one is journaled, and
    /// when its sender expects an answer it gets the CALLERROR the spec
    /// names; `None` then.
    pub(super) fn parse_frame(&mut self, from: Link, text: &str) -> Option<Frame> {
        let e = match frame::parse(text) {
            Ok(f) => return Some(f),
            Err(e) => e,
        };
        let code = e.error_code(self.proto);
        self.protocol_error(from, code, &e.detail, text);
        if e.wants_reply() {
            let reply = frame::call_error(e.reply_id(), code, &e.detail);
            match from {
                Link::Charger => self.send_charger(reply),
                Link::Cloud => self.send_cloud(reply),
            }
        }
        None
    }

    /// `raw` is relayed as received: the same shared buffer, no copy.
    fn on_charger_text(&mut self, raw: Utf8Bytes) {
        let text = raw.as_str();
        let Some(frame) = self.parse_frame(Link::Charger, text) else {
            return;
        };
        match frame {
            Frame::Call {
                id,
                action,
                payload,
            } => {
                if self.uses_outbox() && outbox::is_transaction_message(&action, payload.get()) {
                    return self.on_transaction_call(id, action, payload);
                }
                // While an outbox entry is with the cloud, the upstream CALL slot
                // is taken (OCPP-J: one outstanding CALL): answer locally.
                if self.cloud_up() && self.in_flight.is_none() && self.resync.in_flight.is_none() {
                    if self.proto == Protocol::Ocpp16 && event::journal_on_request(&action) {
                        if let Some(ev) =
                            self.received_event(&action, &payload, None, Source::Charger)
                        {
                            self.journal(ev);
                        }
                    }
                    self.out.push(Action::ToCloud(raw.clone()));
                    let sent = self.now.mono;
                    self.pending_up.insert(
                        id,
                        PendingUp {
                            action,
                            payload,
                            sent,
                        },
                    );
                    return;
                }
                self.answer_locally(&id, &action, &payload, Queue::No)
            }
            Frame::CallResult { id, payload } => {
                let result = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
                self.on_charger_answer(&id, CallOutcome::Result(result), text)
            }
            Frame::CallError {
                id,
                code,
                description,
            } => self.on_charger_answer(&id, CallOutcome::Error { code, description }, text),
        }
    }

    fn on_charger_answer(&mut self, id: &str, outcome: CallOutcome, text: &str) {
        if let Some(at) = self.late_down.iter().position(|(k, _)| k == id) {
            // The cloud's call answered after the gateway's timeout: relayed
            // all the same, the cloud decides whether it still cares.
            let (_, p) = self.late_down.remove(at).expect("found above");
            self.journal_remote_action(&p, &outcome);
            if self.cloud_up() {
                self.send_cloud(text.to_string());
            }
            return;
        }
        let Some(p) = self.pending_down.remove(id) else {
            self.protocol_error(
                Link::Charger,
                "ProtocolError",
                "answer to a call that is not outstanding",
                text,
            );
            return;
        };
        self.journal_remote_action(&p, &outcome);
        if let (Source::Cloud, crate::ocpp::Action::SendLocalList, CallOutcome::Result(r)) =
            (p.source, &p.action, &outcome)
        {
            if r["status"] == "Accepted" {
                // The charger took the list: the gateway answers from it too.
                if let Some(op) = crate::auth::local_list_update(&self.id, &p.request) {
                    self.out.push(Action::Commit {
                        ops: vec![Op::Auth(op)],
                        then: Then::Log("store the local list"),
                    });
                }
            }
        }
        match p.reply {
            Some(reply) => self.out.push(Action::Reply(reply, outcome)),
            None if self.cloud_up() => self.send_cloud(text.to_string()),
            None => {
                log::warn!(charger_id = self.id.as_str(); "answer to the cloud's {} dropped: cloud link is down", p.action)
            }
        }
        self.pump_down();
    }

    /// Keep the id tag status from the cloud's answer (authorization cache).
    pub(super) fn remember_tags(
        &mut self,
        action: &crate::ocpp::Action,
        request: &str,
        answer: &str,
    ) {
        if let Some(op) = crate::auth::cache_update(action, request, answer) {
            self.out.push(Action::Commit {
                ops: vec![Op::Auth(op)],
                then: Then::Log("update the authorization cache"),
            });
        }
    }

    pub(super) fn journal_remote_action(&mut self, p: &PendingDown, outcome: &CallOutcome) {
        let (result, error) = match outcome {
            CallOutcome::Result(v) => (Some(v.clone()), None),
            CallOutcome::Error { code, description } => {
                (None, Some(format!("{code}: {description}")))
            }
            CallOutcome::Timeout => (
                None,
                Some("timeout: the charger did not answer".to_string()),
            ),
            CallOutcome::Disconnected => (
                None,
                Some("charger disconnected before answering".to_string()),
            ),
        };
        self.journal(Event::RemoteAction {
            action: p.action.to_string(),
            source: p.source,
            request: crate::event::redact(&p.action, &p.request),
            result,
            error,
            part_of: p.part_of.clone(),
        });
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
