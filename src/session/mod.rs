//! One charger's session task: owns the charger's WebSocket, the journal
//! handle and the connection attempts to the cloud, turns what happens on
//! them into [`Input`]s for the session's state machine
//! ([`state::SessionState`], which holds the cloud socket in its link
//! state), and carries out the [`Action`]s it returns, in order.
//!
//! The path of a frame: charger socket → here (`next_input`) →
//! `state.rs` (`on_charger_text`: relay, journal, or answer locally) →
//! here (`exec`: the journal, then the cloud socket), and back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::hub::{Accepted, Command, Ctx};
use crate::journal::Journal;
use crate::ocpp::Protocol;
use crate::upstream::{basic_auth, ConnectError, UpStream};

mod answer;
mod cloud;
pub mod inout;
mod link;
mod replay;
mod resync;
pub mod state;

pub use inout::{Action, ChargerMsg, CloudMsg, Env, Input, Now, Setup};
pub use state::SessionState;

/// How long a closing socket gets to say goodbye.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How one action went. (Large only when it feeds a finished commit back,
/// and each is consumed at once.)
#[allow(clippy::large_enum_variant)]
enum Done {
    Next,
    /// Feed this to the state before the rest of the batch.
    Feed(Input<UpStream>),
    /// A write to the charger failed: the session is over.
    ChargerGone(String),
    Stop,
}

/// A connection attempt to the cloud: the socket and the protocol the
/// cloud chose.
pub type Connecting = tokio::task::JoinHandle<Result<(UpStream, Protocol), ConnectError>>;
type ChargerWs = WebSocketStream<crate::tls::ChargerStream>;

impl Env for Journal {
    fn tag_status(&self, charger: &str, tag: &str, now: jiff::Timestamp) -> Option<String> {
        self.auth_lookup(charger, tag).map(|i| i.status_at(now))
    }

    fn next_local_tx_id(&self) -> i64 {
        Journal::next_local_tx_id(self)
    }

    fn next_outbox_key(&self) -> u64 {
        Journal::next_outbox_key(self)
    }

    fn outbox_full(&self) -> bool {
        Journal::outbox_full(self)
    }

    fn transaction_running(&self, charger: &str, tx: i64) -> bool {
        self.state().chargers.get(charger).is_some_and(|c| {
            c.transactions
                .values()
                .any(|t| t.transaction_id == Some(tx))
        })
    }
}

/// The session's I/O: everything the state machine does not hold.
struct Io {
    ctx: Ctx,
    id: String,
    /// What the charger offered, in its order: offered to the cloud.
    offered: Vec<Protocol>,
    /// What the gateway presents to the cloud for this charger.
    authorization: Option<String>,
    charger: ChargerWs,
    connecting: Option<Connecting>,
    /// The second backends that see this charger.
    mirrors: Vec<crate::hub::MirrorFeed>,
}

/// Close the session a new connection replaces and wait (a few seconds at
/// most) until it is gone, so the cloud never sees the charger twice.
pub async fn replace(old: Option<(mpsc::Sender<Box<Command>>, watch::Receiver<bool>)>) {
    if let Some((old_cmd, mut old_done)) = old {
        let _ = old_cmd.send(Box::new(Command::Replace)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), old_done.wait_for(|d| *d)).await;
    }
}

/// The `Authorization` the gateway presents to the cloud for a charger:
/// its configured upstream password, else the charger's own header.
pub fn cloud_authorization(ctx: &Ctx, acc: &Accepted) -> Option<String> {
    match ctx
        .cfg
        .chargers
        .get(&acc.id)
        .and_then(|c| c.upstream_password.as_deref())
    {
        Some(pw) => Some(basic_auth(&acc.id, pw)),
        None => acc.authorization.clone(),
    }
}

/// Run a charger's session until either side ends it. `connecting` is the
/// connection attempt to the cloud the handshake started, if any.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: Ctx,
    acc: Accepted,
    remote: SocketAddr,
    ws: ChargerWs,
    conn: u64,
    mut cmd_rx: mpsc::Receiver<Box<Command>>,
    done: watch::Sender<bool>,
    connecting: Option<Connecting>,
) {
    let cfg = ctx.cfg.clone();
    let authorization = cloud_authorization(&ctx, &acc);
    let mut setup = Setup {
        id: acc.id.clone(),
        proto: acc.proto,
        cfg,
        cloud_url: ctx.connector.as_ref().map(|c| c.url_for(&acc.id)),
        backoff: ctx.connector.as_ref().map(|c| c.backoff()),
        outbox: Vec::new(),
        tx_map: Vec::new(),
    };
    if setup.cloud_url.is_some() {
        // What a previous session (or run) left queued for this charger
        // (for 2.0.1 too: a switch from `hold` to `disconnect` still
        // delivers what was queued), in the protocol it speaks now: what a
        // charger queued in the other version waits for a session in it.
        match (ctx.journal.outbox(&acc.id), ctx.journal.tx_map(&acc.id)) {
            (Ok(mut q), Ok(map)) => {
                q.retain(|(_, e)| crate::outbox::belongs_to(e, acc.proto));
                setup.outbox = q;
                setup.tx_map = map;
            }
            (Err(e), _) | (_, Err(e)) => {
                log::error!(charger_id = acc.id.as_str(); "cannot load the outbox: {e}")
            }
        }
    }
    let env = Box::new(ctx.journal.clone());
    let mut state = SessionState::new(setup, env, Now::system());
    let mirrors = ctx.mirrors.attach(&ctx, &acc.id, acc.proto);
    let mut io = Io {
        id: acc.id.clone(),
        offered: acc.offered.clone(),
        authorization,
        charger: ws,
        connecting,
        mirrors,
        ctx,
    };
    let start = state.handle(
        Input::Start {
            // The scheme says which security profile is in use.
            remote: format!("{}://{remote}", if acc.tls { "wss" } else { "ws" }),
        },
        Now::system(),
    );
    if io.exec(&mut state, start).await {
        io.run_loop(&mut state, &mut cmd_rx).await;
    }
    // A charger that closed first is owed our close frame (RFC 6455
    // §5.5.1): tungstenite queued it, this sends it. (After a close of our
    // own, or a lost connection, it returns at once.)
    let _ = tokio::time::timeout(CLOSE_WAIT, SinkExt::close(&mut io.charger)).await;
    for m in &mut io.mirrors {
        m.send(crate::hub::MirrorMsg::SessionEnded);
    }
    if let Some(c) = io.connecting.take() {
        c.abort();
    }
    io.ctx.registry.unregister(&io.id, conn);
    let _ = done.send(true);
}

async fn next_cloud(up: Option<&mut UpStream>) -> Option<Result<Message, WsError>> {
    match up {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn connected(c: &mut Option<Connecting>) -> Result<(UpStream, Protocol), ConnectError> {
    match c {
        Some(f) => f
            .await
            .unwrap_or_else(|e| Err(ConnectError::Task(e.to_string()))),
        None => std::future::pending().await,
    }
}

fn close_of(f: Option<CloseFrame>) -> Option<(u16, String)> {
    f.map(|f| (u16::from(f.code), f.reason.to_string()))
}

fn charger_msg(msg: Option<Result<Message, WsError>>) -> ChargerMsg {
    match msg {
        Some(Ok(Message::Text(t))) => ChargerMsg::Text(t),
        Some(Ok(Message::Binary(_))) => ChargerMsg::Binary,
        Some(Ok(Message::Close(f))) => ChargerMsg::Closed(close_of(f)),
        // Ping/pong: tungstenite answers pings itself.
        Some(Ok(_)) => ChargerMsg::Other,
        Some(Err(WsError::Capacity(e))) => ChargerMsg::TooBig(e.to_string()),
        Some(Err(e)) => ChargerMsg::Lost(format!("connection lost: {e}")),
        None => ChargerMsg::Lost("connection lost".into()),
    }
}

fn cloud_msg(msg: Option<Result<Message, WsError>>) -> CloudMsg {
    match msg {
        Some(Ok(Message::Text(t))) => CloudMsg::Text(t),
        Some(Ok(Message::Binary(_))) => CloudMsg::Binary,
        Some(Ok(Message::Close(f))) => CloudMsg::Closed(close_of(f)),
        Some(Ok(_)) => CloudMsg::Other,
        Some(Err(e)) => CloudMsg::Lost(format!("connection lost: {e}")),
        None => CloudMsg::Lost("connection lost".into()),
    }
}

impl Io {
    async fn run_loop(
        &mut self,
        state: &mut SessionState<UpStream>,
        cmd_rx: &mut mpsc::Receiver<Box<Command>>,
    ) {
        let mut wake_at = tokio::time::Instant::from_std(state.deadline());
        let timer = tokio::time::sleep_until(wake_at);
        tokio::pin!(timer);
        // Created once: every session shares the shutdown token, and a
        // fresh `cancelled()` each turn would lock its waiter list twice
        // per message.
        let shutdown = self.ctx.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        loop {
            let want = tokio::time::Instant::from_std(state.deadline());
            if want != wake_at {
                wake_at = want;
                timer.as_mut().reset(want);
            }
            let hold_charger = state.holds_charger();
            let input = tokio::select! {
                // Not `biased`: sockets first saved no measurable CPU in
                // `chargegate bench`, and a charger flooding without a rate
                // limit could then starve commands, ticks and shutdown.
                msg = self.charger.next(), if !hold_charger => Input::Charger(charger_msg(msg)),
                msg = next_cloud(state.cloud_mut()) => Input::Cloud(cloud_msg(msg)),
                res = connected(&mut self.connecting) => {
                    self.connecting = None;
                    if let Ok((_, chosen)) = &res {
                        self.ctx.registry.cloud_chose(&self.id, *chosen);
                    }
                    Input::Connected(res.map(|(ws, p)| (Box::new(ws), p)))
                }
                cmd = cmd_rx.recv() => Input::Command(cmd.map_or(Command::Replace, |c| *c)),
                _ = &mut timer => Input::Timer,
                _ = &mut shutdown => Input::Shutdown,
            };
            if !self.mirrors.is_empty() {
                self.feed_mirrors(&input);
            }
            let actions = state.handle(input, Now::system());
            if !self.exec(state, actions).await {
                return;
            }
        }
    }

    /// Carry out actions in order. A commit's follow-up actions run right
    /// after it, before the rest. Returns false once the session is over.
    async fn exec(
        &mut self,
        state: &mut SessionState<UpStream>,
        actions: Vec<Action<UpStream>>,
    ) -> bool {
        let mut queue: VecDeque<Action<UpStream>> = actions.into();
        while let Some(action) = queue.pop_front() {
            if !self.mirrors.is_empty() {
                self.mirror_started(&action);
            }
            let input = match self.exec_one(state, action).await {
                Done::Next => continue,
                Done::Stop => return false,
                Done::Feed(input) => input,
                // A session already ending has nothing to lose.
                Done::ChargerGone(_) if queue.iter().any(|a| matches!(a, Action::Stop)) => continue,
                Done::ChargerGone(why) => {
                    // The rest was meant for a charger that is gone.
                    queue.clear();
                    Input::ChargerWriteFailed(why)
                }
            };
            for a in state.handle(input, Now::system()).into_iter().rev() {
                queue.push_front(a);
            }
        }
        true
    }

    /// Carry out one action.
    async fn exec_one(
        &mut self,
        state: &mut SessionState<UpStream>,
        action: Action<UpStream>,
    ) -> Done {
        match action {
            Action::ToCharger(text) => {
                if let Err(e) = self.charger.send(Message::Text(text)).await {
                    return Done::ChargerGone(e.to_string());
                }
            }
            Action::ToCloud(text) => {
                // No socket: the link went down earlier in this batch, and
                // the state answered what waited for it.
                if let Some(up) = state.cloud_mut() {
                    if up.send(Message::Text(text)).await.is_err() {
                        return Done::Feed(Input::CloudWriteFailed);
                    }
                }
            }
            Action::Ping => {
                let ping = Message::Ping(Default::default());
                if let Err(e) = self.charger.send(ping.clone()).await {
                    return Done::ChargerGone(format!("ping failed: {e}"));
                }
                if let Some(up) = state.cloud_mut() {
                    let _ = up.send(ping).await;
                }
            }
            Action::Journal(ev) => self.ctx.journal.record(Some(&self.id), ev).await,
            Action::Commit { ops, then } => {
                let res = self.ctx.journal.commit(ops).await;
                return Done::Feed(Input::Committed(then, res));
            }
            Action::Submit(ops) => self.ctx.journal.submit(ops).await,
            Action::Reply(reply, outcome) => {
                let _ = reply.send(outcome);
            }
            Action::Stored(reply, ok) => {
                let _ = reply.send(ok);
            }
            Action::OpenCloud => self.open_cloud(),
            Action::CloseCharger(code, why, wait) => {
                let frame = CloseFrame {
                    code,
                    reason: why.into(),
                };
                // The close handshake (RFC 6455 §7.1.1): send ours, then read
                // until the charger's own close arrives, so the socket is not
                // dropped with unread data (which resets the connection and
                // can lose our close frame on the way).
                let charger = &mut self.charger;
                let handshake = async {
                    if charger.close(Some(frame)).await.is_ok() && wait {
                        while let Some(Ok(_)) = charger.next().await {}
                    }
                };
                let _ = tokio::time::timeout(CLOSE_WAIT, handshake).await;
            }
            Action::CloseCloud(mut up) => {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "charger disconnected".into(),
                };
                // Our close frame; or, when the cloud closed first, the
                // answer tungstenite queued (it refuses a second frame, and
                // `SinkExt::close` flushes what is queued).
                let close = async {
                    if (*up).close(Some(frame)).await.is_err() {
                        let _ = SinkExt::close(&mut *up).await;
                    }
                };
                let _ = tokio::time::timeout(CLOSE_WAIT, close).await;
            }
            Action::Stop => return Done::Stop,
        }
        Done::Next
    }

    /// Hand the mirrors a CALL the charger sent (as received).
    fn feed_mirrors(&mut self, input: &Input<UpStream>) {
        let Input::Charger(ChargerMsg::Text(t)) = input else {
            return;
        };
        if let Ok(crate::ocpp::frame::Frame::Call {
            action, payload, ..
        }) = crate::ocpp::frame::parse(t.as_str())
        {
            for m in &mut self.mirrors {
                m.send(crate::hub::MirrorMsg::Call {
                    action: action.to_string(),
                    payload: payload.get().to_string(),
                });
            }
        }
    }

    /// Tell the mirrors which transaction id the charger was given, from
    /// the StartTransaction the session journals with its answer.
    fn mirror_started(&mut self, action: &Action<UpStream>) {
        let events: Vec<&crate::event::Event> = match action {
            Action::Journal(ev) => vec![ev],
            Action::Commit { ops, .. } | Action::Submit(ops) => ops
                .iter()
                .filter_map(|op| match op {
                    crate::journal::Op::Event { event, .. } => Some(event),
                    _ => None,
                })
                .collect(),
            _ => return,
        };
        for ev in events {
            if let crate::event::Event::StartTransaction {
                connector,
                transaction_id: Some(tx),
                ..
            } = ev
            {
                for m in &mut self.mirrors {
                    m.send(crate::hub::MirrorMsg::Started {
                        connector: *connector,
                        tx: *tx,
                    });
                }
            }
        }
    }

    fn open_cloud(&mut self) {
        let Some(connector) = self.ctx.connector.clone() else {
            return;
        };
        if self.connecting.is_some() {
            // The attempt the handshake started is still on its way.
            return;
        }
        let (id, auth) = (self.id.clone(), self.authorization.clone());
        let offered = self.offered.clone();
        self.connecting = Some(tokio::spawn(async move {
            connector.connect(&id, &offered, auth.as_deref()).await
        }));
    }
}
