//! The hub every part of the gateway stands on: what sessions share
//! ([`Ctx`]), the registry of live sessions through which the API, MQTT,
//! the smart engine and force stop reach a charger ([`Registry`]), and
//! the typed commands a session takes ([`Command`], [`CallOutcome`]).
//! It sits at the bottom of the house: it imports no module above it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::event::{Event, Source};
use crate::journal::Journal;
use crate::ocpp::Protocol;
use crate::upstream::Connector;

/// What every session shares.
#[derive(Clone)]
pub struct Ctx {
    /// The config this task started with (for a session: the config in
    /// force when its charger connected).
    pub cfg: Arc<Config>,
    /// The config in force now (SIGHUP swaps its live parts).
    pub live: crate::config::Live,
    pub journal: Journal,
    pub connector: Option<Arc<Connector>>,
    pub registry: Registry,
    /// Cancelled once: the gateway is shutting down.
    pub shutdown: CancellationToken,
    /// Every charger connection's task, so that shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Outstanding diagnostics upload URLs.
    pub uploads: crate::diagnostics::Uploads,
    /// Where the diagnostics upload listener is bound.
    pub upload_addr: SocketAddr,
    /// Wall-clock time for schedules (tests move it).
    pub clock: crate::clock::Clock,
    /// Open charger connections, for the per-address and total caps.
    pub conns: crate::limits::Connections,
    /// Smart charging's view: limits, load management, the meter.
    pub smart: crate::smart::status::StatusHandle,
    /// Second backends and their links (`crate::mirror`).
    pub mirrors: Arc<dyn MirrorHub>,
}

/// Second backends as a session sees them: it attaches when its charger
/// connects and feeds each mirror link what the charger does. (A trait,
/// so that the hub does not depend on the mirror module that uses it.)
pub trait MirrorHub: Send + Sync {
    /// The feeds for charger `id`'s session, one per mirror that sees it.
    fn attach(&self, ctx: &Ctx, id: &str, proto: Protocol) -> Vec<MirrorFeed>;
}

/// No mirrors.
pub struct NoMirrors;

impl MirrorHub for NoMirrors {
    fn attach(&self, _: &Ctx, _: &str, _: Protocol) -> Vec<MirrorFeed> {
        Vec::new()
    }
}

/// What a session tells a mirror link.
#[derive(Debug, Clone)]
pub enum MirrorMsg {
    /// A CALL the charger sent, with its payload as received.
    Call { action: String, payload: String },
    /// The charger was told this transaction id for its StartTransaction
    /// on `connector`.
    Started { connector: u32, tx: i64 },
    /// The charger's session ended; the link closes once its backlog is
    /// delivered.
    SessionEnded,
}

/// A session's handle on one mirror link.
pub struct MirrorFeed {
    pub name: String,
    pub tx: mpsc::Sender<MirrorMsg>,
    dropped: u64,
}

impl MirrorFeed {
    pub fn new(name: String, tx: mpsc::Sender<MirrorMsg>) -> MirrorFeed {
        MirrorFeed {
            name,
            tx,
            dropped: 0,
        }
    }

    /// Hand the link a message; never waits.
    pub fn send(&mut self, msg: MirrorMsg) {
        if self.tx.try_send(msg).is_err() {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                log::warn!(
                    "mirror {}: its link is not keeping up; {} message(s) dropped",
                    self.name,
                    self.dropped
                );
            }
        }
    }
}

/// What other parts of the gateway can ask a session to do.
pub enum Command {
    /// A newer connection with the same id took over.
    Replace,
    /// Queue a message for the cloud as if the charger had sent it, and
    /// journal `event` with it (a force-stopped transaction's
    /// StopTransaction). Replies once it is stored.
    Enqueue {
        action: crate::ocpp::Action,
        payload: Value,
        event: Event,
        reply: oneshot::Sender<bool>,
    },
    /// Send a call of the gateway's own to the charger.
    Call {
        action: crate::ocpp::Action,
        payload: Value,
        source: Source,
        /// The larger action this call is a step of (a force stop).
        part_of: Option<String>,
        reply: oneshot::Sender<CallOutcome>,
    },
}

/// How a gateway-originated call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    Result(Value),
    Error { code: String, description: String },
    Timeout,
    Disconnected,
}

impl CallOutcome {
    /// A word or two for reports: the answer's status, or what went wrong.
    pub fn brief(&self) -> String {
        match self {
            CallOutcome::Result(v) => v["status"].as_str().unwrap_or("answered").to_string(),
            CallOutcome::Error { code, .. } => format!("error {code}"),
            CallOutcome::Timeout => "no answer".into(),
            CallOutcome::Disconnected => "charger disconnected".into(),
        }
    }
}

/// What `register` hands a new session: its connection number, command
/// receiver, done signal, and the session it replaces (if any).
pub(crate) type Registration = (
    u64,
    mpsc::Receiver<Box<Command>>,
    watch::Sender<bool>,
    Option<(mpsc::Sender<Box<Command>>, watch::Receiver<bool>)>,
);

/// A live session as seen from outside.
struct Handle {
    conn: u64,
    /// The gateway's address as the charger reached it.
    local: Option<SocketAddr>,
    /// Boxed: the channel reserves its first block of slots up front, and
    /// 32 unboxed commands would cost every session 6 KB.
    cmd: mpsc::Sender<Box<Command>>,
    done: watch::Receiver<bool>,
}

/// Live sessions by charge point id.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<String, Handle>>>,
    next_conn: Arc<AtomicU64>,
    /// The protocol the cloud last chose for each charger, so that a
    /// charger connecting while the cloud is away is given what the cloud
    /// will take when it returns.
    cloud_choice: Arc<Mutex<HashMap<String, Protocol>>>,
    /// Chargers closed at the handshake because the cloud is away (offline
    /// mode `disconnect`), so an outage is journaled once per charger.
    cloud_away: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// How many chargers' cloud choices are remembered (unknown chargers may
/// connect under any id).
const MAX_CLOUD_CHOICES: usize = 10_000;

impl Registry {
    /// Register a new connection for `id`; returns its connection number, its
    /// command receiver, its done signal, and the session it replaces.
    pub(crate) fn register(&self, id: &str, local: Option<SocketAddr>) -> Registration {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let (cmd, rx) = mpsc::channel(64);
        let (done_tx, done) = watch::channel(false);
        let old = self.lock().insert(
            id.to_string(),
            Handle {
                conn,
                local,
                cmd,
                done,
            },
        );
        (conn, rx, done_tx, old.map(|h| (h.cmd, h.done)))
    }

    /// Remember the protocol the cloud chose for `id`.
    pub(crate) fn cloud_chose(&self, id: &str, proto: Protocol) {
        let mut map = self.cloud_choice.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CLOUD_CHOICES && !map.contains_key(id) {
            map.clear();
        }
        map.insert(id.to_string(), proto);
        drop(map);
        let mut away = self.cloud_away.lock().unwrap_or_else(|e| e.into_inner());
        away.remove(id);
    }

    /// Note that the cloud is away for `id`'s handshake; true the first
    /// time in an outage (the cloud choosing again ends it).
    pub(crate) fn cloud_away(&self, id: &str) -> bool {
        let mut away = self.cloud_away.lock().unwrap_or_else(|e| e.into_inner());
        if away.len() >= MAX_CLOUD_CHOICES && !away.contains(id) {
            away.clear();
        }
        away.insert(id.to_string())
    }

    /// The protocol the cloud last chose for `id`, if it did.
    pub(crate) fn cloud_choice(&self, id: &str) -> Option<Protocol> {
        let map = self.cloud_choice.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).copied()
    }

    /// Forget a session, unless a newer connection already took its place.
    pub(crate) fn unregister(&self, id: &str, conn: u64) {
        let mut map = self.lock();
        if map.get(id).is_some_and(|h| h.conn == conn) {
            map.remove(id);
        }
    }

    /// The command channel of a connected charger.
    pub fn get(&self, id: &str) -> Option<mpsc::Sender<Box<Command>>> {
        self.lock().get(id).map(|h| h.cmd.clone())
    }

    /// Send a call of the gateway's own to a connected charger and wait for
    /// how it ended (the session times it out after `call_timeout`; `wait`
    /// is a backstop). `None`: the charger is not connected.
    pub async fn call(
        &self,
        id: &str,
        action: &str,
        payload: serde_json::Value,
        source: crate::event::Source,
        wait: std::time::Duration,
    ) -> Option<CallOutcome> {
        self.call_step(id, action, payload, source, None, wait)
            .await
    }

    /// [`call`](Self::call) as a step of a larger action (`part_of`,
    /// journaled with it).
    pub async fn call_step(
        &self,
        id: &str,
        action: &str,
        payload: serde_json::Value,
        source: crate::event::Source,
        part_of: Option<&str>,
        wait: std::time::Duration,
    ) -> Option<CallOutcome> {
        let cmd = self.get(id)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        cmd.send(Box::new(Command::Call {
            action: action.into(),
            payload,
            source,
            part_of: part_of.map(str::to_string),
            reply,
        }))
        .await
        .ok()?;
        Some(
            tokio::time::timeout(wait, rx)
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or(CallOutcome::Timeout),
        )
    }

    /// The gateway's address as a connected charger reached it.
    pub fn local_addr(&self, id: &str) -> Option<SocketAddr> {
        self.lock().get(id).and_then(|h| h.local)
    }

    /// Ids of connected chargers.
    pub fn connected(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection the handshake accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    /// The protocol this connection speaks (the cloud's choice among
    /// `offered`, or the gateway's when it decides alone).
    pub proto: Protocol,
    /// What the charger offered that the gateway speaks, in its order.
    pub offered: Vec<Protocol>,
    /// It connected over TLS (wss://).
    pub tls: bool,
    /// The charger's own `Authorization` header, to pass through upstream.
    pub authorization: Option<String>,
}
