//! One charger's session: owns the charger's WebSocket and its upstream
//! WebSocket, relays frames between them byte for byte, journals what they
//! mean, and answers the charger itself whenever the cloud cannot.
//!
//! The path of a frame: charger socket → `on_charger_text` → journal →
//! upstream socket (or `answer_locally`), and back through
//! `on_upstream_text`. Calls toward the charger keep OCPP-J's rule of one
//! outstanding CALL: the gateway's own calls wait behind the cloud's and
//! the cloud's behind the gateway's.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::clock::now_rfc3339;
use crate::event::{self, Event, Link, Source};
use crate::hub::{Accepted, CallOutcome, Command, Ctx};
use crate::journal::Op;
use crate::ocpp::frame::{self, Frame};
use crate::ocpp::{local, Protocol};
use crate::outbox::{self, Entry};
use crate::upstream::{basic_auth, Backoff, UpStream};

mod link;
mod replay;
mod resync;
use replay::{InFlight, Queue};
use resync::Resync;

type Connecting = tokio::task::JoinHandle<Result<UpStream, String>>;

enum UpLink {
    /// No cloud configured.
    Standalone,
    /// A connection attempt is running; `first` holds the charger's frames
    /// back so that its BootNotification reaches the cloud.
    Connecting {
        first: bool,
    },
    Up,
    /// Waiting to retry.
    Down {
        retry_at: Instant,
    },
}

struct PendingUp {
    action: String,
    payload: Box<RawValue>,
    sent: Instant,
}

struct PendingDown {
    action: String,
    request: Value,
    source: Source,
    reply: Option<oneshot::Sender<CallOutcome>>,
    sent: Instant,
}

/// A call toward the charger that waits for its turn.
enum Queued {
    Cloud {
        text: String,
        id: String,
        action: String,
        request: Value,
    },
    Local {
        action: String,
        payload: Value,
        source: Source,
        reply: oneshot::Sender<CallOutcome>,
    },
}

/// Why a session ends.
struct End {
    reason: String,
    /// Close frame to send the charger, if its socket is still open.
    close: Option<(CloseCode, &'static str)>,
    code: Option<u16>,
}

impl End {
    fn new(reason: impl Into<String>, close: Option<(CloseCode, &'static str)>) -> End {
        End {
            reason: reason.into(),
            close,
            code: None,
        }
    }
}

struct Session {
    ctx: Ctx,
    id: String,
    proto: Protocol,
    authorization: Option<String>,
    charger: WebSocketStream<crate::tls::ChargerStream>,
    upstream: Option<UpStream>,
    link: UpLink,
    connecting: Option<Connecting>,
    backoff: Option<Backoff>,
    last_connect_error: Option<String>,
    pending_up: HashMap<String, PendingUp>,
    pending_down: HashMap<String, PendingDown>,
    queue_down: VecDeque<Queued>,
    local_ids: u64,
    /// This charger's queued transaction messages, mirrored from storage.
    outbox: VecDeque<(u64, Entry)>,
    /// The outbox entry with the cloud right now.
    in_flight: Option<InFlight>,
    /// No outbox entry goes out before this (retry interval after an error).
    outbox_retry_at: Option<Instant>,
    /// Local transaction id → the cloud's, and back.
    to_cloud: HashMap<i64, i64>,
    to_local: HashMap<i64, i64>,
    /// Offline transactions stopped because the cloud refused their tag.
    deauthorized: std::collections::HashSet<i64>,
    /// Boot and statuses the cloud missed while the gateway answered.
    resync: Resync,
    last_rx: Instant,
    last_ping: Instant,
    /// The charger's message rate (`ocpp.rate_limit_per_sec`).
    rate: Option<crate::limits::Rate>,
}

/// Calls waiting for the charger or for its answer before the gateway
/// answers new ones from the cloud with "busy" (the cloud's own calls are
/// relayed as they come; a charger that never answers must not make the
/// gateway remember them without bound).
const MAX_QUEUED_DOWN: usize = 64;

/// The housekeeping tick's period while something waits on a timeout.
const TICK: Duration = Duration::from_secs(1);
/// With nothing waiting and pings off, the tick still runs this often.
const IDLE_TICK: Duration = Duration::from_secs(3600);
/// A charger is closed when it has sent nothing, pongs included, for two
/// ping intervals and this long.
const PING_GRACE: Duration = Duration::from_secs(5);

/// Run a charger's session until either side ends it.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: Ctx,
    acc: Accepted,
    remote: SocketAddr,
    ws: WebSocketStream<crate::tls::ChargerStream>,
    conn: u64,
    mut cmd_rx: mpsc::Receiver<Box<Command>>,
    done: watch::Sender<bool>,
    old: Option<(mpsc::Sender<Box<Command>>, watch::Receiver<bool>)>,
) {
    if let Some((old_cmd, mut old_done)) = old {
        // Close the old connection first, so the cloud never sees two.
        let _ = old_cmd.send(Box::new(Command::Replace)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), old_done.wait_for(|d| *d)).await;
    }
    let cfg = ctx.cfg.clone();
    let authorization = match cfg
        .chargers
        .get(&acc.id)
        .and_then(|c| c.upstream_password.as_deref())
    {
        Some(pw) => Some(basic_auth(&acc.id, pw)),
        None => acc.authorization.clone(),
    };
    let now = Instant::now();
    let mut s = Session {
        backoff: ctx.connector.as_ref().map(|c| c.backoff()),
        link: UpLink::Standalone,
        ctx,
        id: acc.id.clone(),
        proto: acc.proto,
        authorization,
        charger: ws,
        upstream: None,
        connecting: None,
        last_connect_error: None,
        pending_up: HashMap::new(),
        pending_down: HashMap::new(),
        queue_down: VecDeque::new(),
        local_ids: 0,
        outbox: VecDeque::new(),
        in_flight: None,
        outbox_retry_at: None,
        to_cloud: HashMap::new(),
        to_local: HashMap::new(),
        resync: Resync::default(),
        deauthorized: Default::default(),
        last_rx: now,
        last_ping: now,
        rate: (cfg.rate_per_sec > 0)
            .then(|| crate::limits::Rate::new(cfg.rate_per_sec, cfg.rate_burst, now.into_std())),
    };
    let connect_ev = Event::Connect {
        link: Link::Charger,
        remote: Some(remote.to_string()),
        protocol: Some(acc.proto.as_str().into()),
    };
    s.journal(connect_ev).await;
    if s.uses_outbox() {
        s.load_outbox();
    }
    if s.ctx.connector.is_some() {
        s.start_connect(true);
    }
    let end = s.run_loop(&mut cmd_rx).await;
    s.finish(end).await;
    s.ctx.registry.unregister(&s.id, conn);
    let _ = done.send(true);
}

async fn next_upstream(up: &mut Option<UpStream>) -> Option<Result<Message, WsError>> {
    match up {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

/// Sleep until `at`; the timer is made only when polled, so a disabled
/// select branch costs nothing.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn connected(c: &mut Option<Connecting>) -> Result<UpStream, String> {
    match c {
        Some(f) => f
            .await
            .unwrap_or_else(|e| Err(format!("connect task failed: {e}"))),
        None => std::future::pending().await,
    }
}

impl Session {
    async fn run_loop(&mut self, cmd_rx: &mut mpsc::Receiver<Box<Command>>) -> End {
        // The housekeeping tick (timeouts, pings) runs only when needed:
        // armed earlier whenever `next_tick` asks for it, re-armed from
        // scratch each time it fires.
        let mut last_tick = Instant::now();
        let mut tick_at = last_tick + TICK;
        let tick = tokio::time::sleep_until(tick_at);
        tokio::pin!(tick);
        let mut shutdown = self.ctx.shutdown.clone();
        // Created once: every session shares the shutdown channel, and a
        // fresh `changed()` each turn would lock its waiter list twice per
        // message.
        let shutdown = shutdown.changed();
        tokio::pin!(shutdown);
        loop {
            let hold_charger = matches!(self.link, UpLink::Connecting { first: true });
            let retry_at = match self.link {
                UpLink::Down { retry_at } => Some(retry_at),
                _ => None,
            };
            let want = self.next_tick(last_tick);
            if want < tick_at {
                tick_at = want;
                tick.as_mut().reset(want);
            }
            let step = tokio::select! {
                // Not `biased`: sockets first saved no measurable CPU in
                // `chargegate bench`, and a charger flooding without a rate
                // limit could then starve commands, ticks and shutdown.
                msg = self.charger.next(), if !hold_charger => self.on_charger_msg(msg).await,
                msg = next_upstream(&mut self.upstream) => self.on_upstream_msg(msg).await,
                res = connected(&mut self.connecting) => {
                    self.connecting = None;
                    // Boxed: the largest handler by far, and it runs once per
                    // link-up; inline it would double every session's size.
                    Box::pin(self.on_connected(res)).await
                }
                _ = sleep_until(retry_at), if retry_at.is_some() => {
                    self.start_connect(false);
                    Ok(())
                }
                cmd = cmd_rx.recv() => match cmd.map(|c| *c) {
                    Some(Command::Replace) | None => Err(End::new("replaced by a new connection", Some((CloseCode::Normal, "replaced by a new connection")))),
                    Some(Command::Call { action, payload, source, reply }) => {
                        self.queue_down.push_back(Queued::Local { action, payload, source, reply });
                        self.pump_down().await
                    }
                    Some(Command::Enqueue { action, payload, event, reply }) => self.enqueue(action, payload, event, reply).await,
                },
                // Boxed like the other rare handlers (see `on_connected`).
                _ = &mut tick => {
                    let step = Box::pin(self.on_tick()).await;
                    last_tick = Instant::now();
                    tick_at = self.next_tick(last_tick);
                    tick.as_mut().reset(tick_at);
                    step
                }
                _ = &mut shutdown => Err(End::new("gateway shutting down", Some((CloseCode::Away, "gateway shutting down")))),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// When the housekeeping tick is next due. Every second while a call,
    /// an outbox entry or a resync waits on a timeout (as often as before);
    /// otherwise only for the next ping or the check that pings are
    /// answered. An idle charger then costs one wake-up per ping instead
    /// of one a second: with 1,000 idle chargers that was 1,000 wake-ups/s
    /// and a few percent of a core for nothing.
    fn next_tick(&self, last_tick: Instant) -> Instant {
        let busy = !self.pending_up.is_empty()
            || !self.pending_down.is_empty()
            || !self.queue_down.is_empty()
            || self.in_flight.is_some()
            || self.resync.in_flight.is_some()
            || !self.resync.is_idle()
            || !self.outbox.is_empty();
        let soonest = last_tick + TICK;
        if busy {
            return soonest;
        }
        let ping = self.ctx.cfg.ping_interval;
        if ping.is_zero() {
            return last_tick + IDLE_TICK;
        }
        let ping_due = self.last_ping + ping;
        let silent_too_long = self.last_rx + ping * 2 + PING_GRACE;
        // Never sooner than a second after the last tick: `on_tick`'s
        // checks are whole-second ones, and a deadline it does not act on
        // must not make the timer fire again at once.
        ping_due.min(silent_too_long).max(soonest)
    }

    async fn journal(&self, ev: Event) {
        self.ctx.journal.record(Some(&self.id), ev).await;
    }

    async fn send_charger(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), End> {
        self.charger
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| End::new(format!("write to charger failed: {e}"), None))
    }

    // ---- charger → gateway ----

    async fn on_charger_msg(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), End> {
        self.last_rx = Instant::now();
        match msg {
            Some(Ok(Message::Text(t))) => {
                if let Some(rate) = &mut self.rate {
                    if !rate.take(self.last_rx.into_std()) {
                        return self.over_rate(t.as_str()).await;
                    }
                }
                self.on_charger_text(t).await
            }
            Some(Ok(Message::Binary(_))) => {
                self.protocol_error(
                    Link::Charger,
                    "ProtocolError",
                    "binary frames are not OCPP-J",
                    "",
                )
                .await;
                Ok(())
            }
            Some(Ok(Message::Close(f))) => {
                let code = f.as_ref().map(|f| u16::from(f.code));
                let why = f
                    .as_ref()
                    .map(|f| f.reason.to_string())
                    .filter(|r| !r.is_empty());
                Err(End {
                    reason: why.unwrap_or_else(|| "charger closed the connection".into()),
                    close: None,
                    code,
                })
            }
            Some(Ok(_)) => Ok(()), // ping/pong: tungstenite answers pings itself
            Some(Err(WsError::Capacity(e))) => Err(End::new(
                format!("charger sent too large a message: {e}"),
                Some((CloseCode::Size, "message too big")),
            )),
            Some(Err(e)) => Err(End::new(format!("connection lost: {e}"), None)),
            None => Err(End::new("connection lost", None)),
        }
    }

    /// A message over the charger's rate: a CALL is answered with a
    /// CALLERROR and not relayed, anything else dropped; one that keeps
    /// flooding is closed with 1008 (policy violation).
    async fn over_rate(&mut self, text: &str) -> Result<(), End> {
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
        if refused == 1 {
            let limit = self.ctx.cfg.rate_per_sec;
            self.protocol_error(
                Link::Charger,
                "GenericError",
                &format!("message rate limit exceeded ({limit}/s): not relayed"),
                text,
            )
            .await;
        }
        if let Ok(Frame::Call { id, .. }) = frame::parse(text) {
            let reply = frame::call_error(
                &id,
                "GenericError",
                &format!(
                    "rate limit exceeded ({}/s); try again later",
                    self.ctx.cfg.rate_per_sec
                ),
            );
            self.send_charger(reply).await?;
        }
        Ok(())
    }

    /// Parse a frame from either side. A malformed one is journaled, and
    /// when its sender expects an answer the CALLERROR to send back is the
    /// error value.
    async fn parse_frame(&self, from: Link, text: &str) -> Result<Frame, Option<String>> {
        let e = match frame::parse(text) {
            Ok(f) => return Ok(f),
            Err(e) => e,
        };
        let code = e.error_code(self.proto);
        self.protocol_error(from, code, &e.detail, text).await;
        Err(e
            .wants_reply()
            .then(|| frame::call_error(e.reply_id(), code, &e.detail)))
    }

    /// `raw` is relayed as received: the same shared buffer, no copy.
    async fn on_charger_text(&mut self, raw: Utf8Bytes) -> Result<(), End> {
        let text = raw.as_str();
        let frame = match self.parse_frame(Link::Charger, text).await {
            Ok(f) => f,
            Err(reply) => {
                if let Some(reply) = reply {
                    self.send_charger(reply).await?;
                }
                return Ok(());
            }
        };
        match frame {
            Frame::Call {
                id,
                action,
                payload,
            } => {
                if self.uses_outbox() && outbox::is_transaction_message(&action, payload.get()) {
                    return Box::pin(self.on_transaction_call(id, action, payload)).await;
                }
                // While an outbox entry is with the cloud, the upstream CALL slot
                // is taken (OCPP-J: one outstanding CALL): answer locally.
                if matches!(self.link, UpLink::Up)
                    && self.in_flight.is_none()
                    && self.resync.in_flight.is_none()
                {
                    if self.proto == Protocol::Ocpp16 && event::journal_on_request(&action) {
                        if let Some(ev) =
                            event::for_charger_call(&action, &payload, None, Source::Charger)
                        {
                            self.journal(ev).await;
                        }
                    }
                    if self.relay_upstream(raw.clone()).await {
                        self.pending_up.insert(
                            id,
                            PendingUp {
                                action,
                                payload,
                                sent: Instant::now(),
                            },
                        );
                        return Ok(());
                    }
                    self.link_down("write to cloud failed".into(), None).await?;
                }
                Box::pin(self.answer_locally(&id, &action, &payload, Queue::No)).await
            }
            Frame::CallResult { id, payload } => {
                let result = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
                Box::pin(self.on_charger_answer(&id, CallOutcome::Result(result), text)).await
            }
            Frame::CallError {
                id,
                code,
                description,
            } => {
                Box::pin(self.on_charger_answer(
                    &id,
                    CallOutcome::Error { code, description },
                    text,
                ))
                .await
            }
        }
    }

    /// The gateway answers a charger's CALL itself, after the event that
    /// the answer acknowledges is on disk.
    async fn answer_locally(
        &mut self,
        id: &str,
        action: &str,
        payload: &RawValue,
        queue: Queue,
    ) -> Result<(), End> {
        if self.proto != Protocol::Ocpp16 {
            let reply = frame::call_error(
                id,
                "InternalError",
                "cloud unreachable; ocpp2.0.1 is relayed only",
            );
            return self.send_charger(reply).await;
        }
        let now = now_rfc3339();
        let journal = self.ctx.journal.clone();
        let now_t = time::OffsetDateTime::now_utc();
        let known = |tag: &str| {
            journal
                .auth_lookup(&self.id, tag)
                .map(|i| i.status_at(now_t))
        };
        let answer = local::answer(
            action,
            payload,
            &now,
            &self.ctx.cfg.policy,
            &known,
            &mut || journal.next_local_tx_id(),
        );
        let reply = match answer {
            Ok(ans) => {
                let raw = RawValue::from_string(ans.to_string())
                    .expect("serde_json output is valid JSON");
                let mut ops = Vec::new();
                if let Some(ev) =
                    event::for_charger_call(action, payload, Some(&raw), Source::Gateway)
                {
                    ops.push(Op::Event {
                        charger: Some(self.id.clone()),
                        event: ev,
                    });
                }
                let local_tx = if action == "StartTransaction" {
                    ans["transactionId"].as_i64()
                } else {
                    None
                };
                let queued = self.queue_op(queue, action, payload, local_tx);
                if let Some(op) = &queued {
                    ops.push(Op::Outbox(op.clone()));
                }
                match self.ctx.journal.commit(ops).await {
                    Ok(keys) => {
                        self.queued(queued, keys.last().copied());
                        self.note_missed(action, payload.get());
                    }
                    Err(e) => {
                        // Never acknowledge what is not stored: the charger keeps
                        // the message and retries.
                        log::error!(charger_id = self.id.as_str(); "cannot store {action}: {e}");
                        let reply = frame::call_error(
                            id,
                            "InternalError",
                            "gateway storage unavailable; retry later",
                        );
                        return self.send_charger(reply).await;
                    }
                }
                frame::call_result(id, &ans)
            }
            Err(le) => {
                self.protocol_error(
                    Link::Charger,
                    le.code,
                    &format!("{action}: {}", le.description),
                    payload.get(),
                )
                .await;
                frame::call_error(id, le.code, &le.description)
            }
        };
        self.send_charger(reply).await
    }

    async fn on_charger_answer(
        &mut self,
        id: &str,
        outcome: CallOutcome,
        text: &str,
    ) -> Result<(), End> {
        let Some(p) = self.pending_down.remove(id) else {
            self.protocol_error(
                Link::Charger,
                "ProtocolError",
                "answer to a call that is not outstanding",
                text,
            )
            .await;
            return Ok(());
        };
        self.journal_remote_action(&p, &outcome).await;
        if let (Source::Cloud, "SendLocalList", CallOutcome::Result(r)) =
            (p.source, p.action.as_str(), &outcome)
        {
            if r["status"] == "Accepted" {
                // The charger took the list: the gateway answers from it too.
                if let Some(op) = crate::auth::local_list_update(&self.id, &p.request) {
                    if let Err(e) = self.ctx.journal.commit(vec![Op::Auth(op)]).await {
                        log::warn!(charger_id = self.id.as_str(); "cannot store the local list: {e}");
                    }
                }
            }
        }
        match p.reply {
            Some(reply) => {
                let _ = reply.send(outcome);
            }
            None if self.upstream.is_some() => {
                if !self.send_upstream(text).await {
                    self.link_down("write to cloud failed".into(), None).await?;
                }
            }
            None => {
                log::warn!(charger_id = self.id.as_str(); "answer to the cloud's {} dropped: cloud link is down", p.action)
            }
        }
        self.pump_down().await
    }

    /// Keep the id tag status from the cloud's answer (authorization cache).
    async fn remember_tags(&self, action: &str, request: &str, answer: &str) {
        if let Some(op) = crate::auth::cache_update(action, request, answer) {
            if let Err(e) = self.ctx.journal.commit(vec![Op::Auth(op)]).await {
                log::warn!(charger_id = self.id.as_str(); "cannot update the authorization cache: {e}");
            }
        }
    }

    async fn journal_remote_action(&self, p: &PendingDown, outcome: &CallOutcome) {
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
        let ev = Event::RemoteAction {
            action: p.action.clone(),
            source: p.source,
            request: crate::event::redact(&p.action, &p.request),
            result,
            error,
        };
        self.journal(ev).await;
    }

    // ---- cloud → gateway ----

    async fn on_upstream_msg(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), End> {
        match msg {
            Some(Ok(Message::Text(t))) => self.on_upstream_text(t).await,
            Some(Ok(Message::Close(f))) => {
                let code = f.as_ref().map(|f| u16::from(f.code));
                let why = f.map(|f| f.reason.to_string()).filter(|r| !r.is_empty());
                self.link_down(
                    why.unwrap_or_else(|| "cloud closed the connection".into()),
                    code,
                )
                .await
            }
            Some(Ok(Message::Binary(_))) => {
                self.protocol_error(
                    Link::Cloud,
                    "ProtocolError",
                    "binary frames are not OCPP-J",
                    "",
                )
                .await;
                Ok(())
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => self.link_down(format!("connection lost: {e}"), None).await,
            None => self.link_down("connection lost".into(), None).await,
        }
    }

    async fn on_upstream_text(&mut self, raw: Utf8Bytes) -> Result<(), End> {
        let text = raw.as_str();
        let frame = match self.parse_frame(Link::Cloud, text).await {
            Ok(f) => f,
            Err(reply) => {
                if let Some(reply) = reply {
                    if !self.send_upstream(&reply).await {
                        self.link_down("write to cloud failed".into(), None).await?;
                    }
                }
                return Ok(());
            }
        };
        match frame {
            Frame::Call {
                id,
                action,
                payload,
            } => {
                if self.queue_down.len() + self.pending_down.len() >= MAX_QUEUED_DOWN {
                    // A cloud that sends faster than the charger answers
                    // must not grow the gateway's memory without bound.
                    let reply = frame::call_error(
                        &id,
                        "GenericError",
                        "charger busy: too many calls waiting for it at the gateway",
                    );
                    if !self.send_upstream(&reply).await {
                        self.link_down("write to cloud failed".into(), None).await?;
                    }
                    return Ok(());
                }
                let request = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
                self.queue_down.push_back(Queued::Cloud {
                    text: text.to_string(),
                    id,
                    action,
                    request,
                });
                self.pump_down().await
            }
            Frame::CallResult { id, payload } => {
                if self.in_flight.as_ref().is_some_and(|f| f.msg_id == id) {
                    // Rare next to relayed frames: boxed, to keep sessions small.
                    return Box::pin(self.on_outbox_result(text, &payload)).await;
                }
                if self.resync.in_flight.as_ref().is_some_and(|f| f.0 == id) {
                    let status = crate::ocpp::messages::AnswerFields::read(&payload).status();
                    return Box::pin(self.on_resync_answer(status, None)).await;
                }
                let Some(p) = self.pending_up.remove(&id) else {
                    self.protocol_error(Link::Cloud, "ProtocolError", "answer to a call that is not outstanding (already answered by the gateway?)", text).await;
                    return Ok(());
                };
                self.send_charger(raw.clone()).await?;
                self.note_delivered(&p.action, p.payload.get());
                self.remember_tags(&p.action, p.payload.get(), payload.get())
                    .await;
                if !(self.proto == Protocol::Ocpp16 && event::journal_on_request(&p.action)) {
                    if let Some(ev) =
                        self.event_for(&p.action, &p.payload, Some(&payload), Source::Cloud)
                    {
                        self.journal(ev).await;
                    }
                }
                self.pump_outbox().await
            }
            Frame::CallError {
                id,
                code,
                description,
            } => {
                if self.in_flight.as_ref().is_some_and(|f| f.msg_id == id) {
                    return Box::pin(self.on_outbox_error(text, &code, &description)).await;
                }
                if self.resync.in_flight.as_ref().is_some_and(|f| f.0 == id) {
                    return Box::pin(
                        self.on_resync_answer(None, Some(format!("{code}: {description}"))),
                    )
                    .await;
                }
                let Some(p) = self.pending_up.remove(&id) else {
                    self.protocol_error(
                        Link::Cloud,
                        "ProtocolError",
                        "error for a call that is not outstanding",
                        text,
                    )
                    .await;
                    return Ok(());
                };
                self.send_charger(raw.clone()).await?;
                self.protocol_error(
                    Link::Cloud,
                    &code,
                    &format!("cloud rejected {}: {description}", p.action),
                    "",
                )
                .await;
                self.pump_outbox().await
            }
        }
    }

    fn event_for(
        &self,
        action: &str,
        payload: &RawValue,
        answer: Option<&RawValue>,
        by: Source,
    ) -> Option<Event> {
        if self.proto == Protocol::Ocpp16 {
            return event::for_charger_call(action, payload, answer, by);
        }
        if action == "Heartbeat" {
            return None;
        }
        let status = answer.and_then(|a| crate::ocpp::messages::AnswerFields::read(a).status());
        Some(Event::ChargerCall {
            action: action.to_string(),
            status,
            answered_by: by,
        })
    }

    /// Send the next call toward the charger when none is outstanding.
    /// Cloud calls are relayed even while another cloud call is out (the
    /// cloud's own business), but never while a gateway call is.
    async fn pump_down(&mut self) -> Result<(), End> {
        while let Some(next) = self.queue_down.front() {
            let local_busy = self.pending_down.values().any(|p| p.reply.is_some());
            let ok = match next {
                Queued::Cloud { .. } => !local_busy,
                Queued::Local { .. } => self.pending_down.is_empty(),
            };
            if !ok {
                return Ok(());
            }
            match self.queue_down.pop_front().expect("front exists") {
                Queued::Cloud {
                    text,
                    id,
                    action,
                    request,
                } => {
                    // The cloud names transactions the charger knows by a local id.
                    let text = self
                        .rewrite_for_charger(&id, &action, &request)
                        .unwrap_or(text);
                    self.pending_down.insert(
                        id,
                        PendingDown {
                            action,
                            request,
                            source: Source::Cloud,
                            reply: None,
                            sent: Instant::now(),
                        },
                    );
                    self.send_charger(text).await?;
                }
                Queued::Local {
                    action,
                    payload,
                    source,
                    reply,
                } => {
                    self.local_ids += 1;
                    // Prefixed so they never collide with the cloud's ids.
                    let id = format!("cg-{}-{}", self.local_ids, fastrand::u32(..));
                    let text = frame::call(&id, &action, &payload);
                    self.pending_down.insert(
                        id,
                        PendingDown {
                            action,
                            request: payload,
                            source,
                            reply: Some(reply),
                            sent: Instant::now(),
                        },
                    );
                    self.send_charger(text).await?;
                }
            }
        }
        Ok(())
    }
}
