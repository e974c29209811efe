//! What goes into the session's state machine and what comes out: the
//! inputs (frames, link events, finished commits, timers, commands), the
//! actions the task carries out, and the small records the state keeps
//! about calls in flight. No behaviour here beyond constructors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::Config;
use crate::event::{Event, Source};
use crate::hub::{CallOutcome, Command};
use crate::journal::{JournalError, Op};
use crate::ocpp::{Action as OcppAction, Protocol};
use crate::outbox::{self, Entry};
use crate::upstream::{Backoff, ConnectError};

/// The time an input happens at: monotonic for timeouts, wall clock for
/// OCPP timestamps and id tag expiry.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: jiff::Timestamp,
}

impl Now {
    /// The machine's clocks now (the task's one clock read).
    pub fn system() -> Now {
        Now {
            mono: Instant::now(),
            wall: jiff::Timestamp::now(),
        }
    }

    pub(super) fn unix_ms(&self) -> i64 {
        self.wall.as_millisecond()
    }
}

/// What the session reads from storage while deciding: in-memory lookups
/// that never wait (the journal implements it; tests bring their own).
pub trait Env: Send {
    /// The authorization cache's status for an id tag at `now`.
    fn tag_status(&self, charger: &str, tag: &str, now: jiff::Timestamp) -> Option<String>;
    /// A fresh (negative) local transaction id.
    fn next_local_tx_id(&self) -> i64;
    /// A fresh outbox key.
    fn next_outbox_key(&self) -> u64;
    /// Whether storage has no room for more queued messages.
    fn outbox_full(&self) -> bool {
        false
    }
    /// Whether the live state has transaction `tx` running on the charger.
    fn transaction_running(&self, charger: &str, tx: i64) -> bool;
}

/// A message from the charger's socket.
#[derive(Debug)]
pub enum ChargerMsg {
    Text(Utf8Bytes),
    Binary,
    /// The charger closed the connection (its close code and reason).
    Closed(Option<(u16, String)>),
    /// A message over `max_message_size`.
    TooBig(String),
    /// The connection broke.
    Lost(String),
    /// Ping or pong: proof of life, nothing else.
    Other,
}

/// A message from the cloud's socket.
#[derive(Debug)]
pub enum CloudMsg {
    Text(Utf8Bytes),
    Binary,
    Closed(Option<(u16, String)>),
    Lost(String),
    Other,
}

/// What happens to a session. `S` is the cloud socket.
pub enum Input<S> {
    /// The session starts: the charger connected from `remote`.
    Start {
        remote: String,
    },
    Charger(ChargerMsg),
    Cloud(CloudMsg),
    /// A connection attempt to the cloud ended: the socket and the
    /// protocol the cloud chose among those the charger offered.
    /// (Boxed: a socket is large, and every input would be as large.)
    Connected(Result<(Box<S>, Protocol), ConnectError>),
    /// A write to the cloud failed: the link is gone.
    CloudWriteFailed,
    /// A write to the charger failed: the session is over.
    ChargerWriteFailed(String),
    /// A commit the session asked for finished.
    Committed(Then, Result<Vec<u64>, JournalError>),
    /// The deadline from [`SessionState::deadline`] passed.
    Timer,
    Command(Command),
    Shutdown,
}

/// What the task does for the session, in order.
pub enum Action<S> {
    ToCharger(Utf8Bytes),
    ToCloud(Utf8Bytes),
    /// Ping the charger (a failure ends the session) and the cloud.
    Ping,
    /// Journal an event about this charger (batched, not waited for).
    Journal(Event),
    /// Commit with fsync and wait; then feed back
    /// [`Input::Committed`] with `then` before anything else.
    Commit {
        ops: Vec<Op>,
        then: Then,
    },
    /// Hand to the journal without waiting for the commit.
    Submit(Vec<Op>),
    Reply(oneshot::Sender<CallOutcome>, CallOutcome),
    /// Answer a [`Command::Enqueue`]: stored or not.
    Stored(oneshot::Sender<bool>, bool),
    /// Start connecting to the cloud; the result comes back as
    /// [`Input::Connected`].
    OpenCloud,
    /// Close the charger's socket with this code (the session is ending);
    /// `true`: wait (briefly) for the charger's own close frame.
    CloseCharger(CloseCode, &'static str, bool),
    /// Close the cloud's socket (the charger left).
    CloseCloud(Box<S>),
    /// The session is over; nothing follows.
    Stop,
}

/// What to do once a commit is done, where the next step depends on it.
pub enum Then {
    /// Nothing: a failure is only logged.
    Log(&'static str),
    /// A local answer: sent once its record is stored, else a CALLERROR.
    LocalAnswer {
        id: String,
        action: OcppAction,
        payload: String,
        reply: String,
        queued: Option<outbox::Op>,
    },
    /// A replayed entry's removal (and id mapping) is stored: the next
    /// entry may go.
    Replayed,
    /// A message queued for the gateway's own purposes.
    Enqueue {
        queued: Option<outbox::Op>,
        reply: oneshot::Sender<bool>,
    },
}

/// The cloud link. The socket lives in `Up`, so a link that is up always
/// has one, and one that is not never does.
pub enum CloudLink<S> {
    /// No cloud configured.
    Standalone,
    /// A connection attempt is running; `first` holds the charger's frames
    /// back so that its BootNotification reaches the cloud.
    Connecting {
        first: bool,
    },
    Up(S),
    /// Waiting to retry.
    Down {
        retry_at: Instant,
    },
}

/// A charger's call relayed to the cloud, waiting for its answer.
pub struct PendingUp {
    pub action: OcppAction,
    pub payload: Box<RawValue>,
    pub sent: Instant,
}

/// A call relayed or sent to the charger, waiting for its answer.
pub struct PendingDown {
    pub action: OcppAction,
    pub request: Value,
    pub source: Source,
    /// The larger action this call is a step of.
    pub part_of: Option<String>,
    /// Who waits locally; `None` for the cloud's calls.
    pub reply: Option<oneshot::Sender<CallOutcome>>,
    pub sent: Instant,
}

/// A call toward the charger that waits for its turn.
pub enum Queued {
    Cloud {
        text: String,
        id: String,
        action: OcppAction,
        request: Value,
    },
    Local {
        action: OcppAction,
        payload: Value,
        source: Source,
        part_of: Option<String>,
        reply: oneshot::Sender<CallOutcome>,
    },
}

/// Why a session ends.
#[derive(Debug)]
pub struct End {
    pub reason: String,
    /// Close frame to send the charger, if its socket is still open.
    pub close: Option<(CloseCode, &'static str)>,
    pub code: Option<u16>,
    /// Wait for the charger's close frame after ours (a charger that is
    /// alive); not for one that is gone or silent.
    pub handshake: bool,
}

impl End {
    pub(super) fn new(reason: impl Into<String>, close: Option<(CloseCode, &'static str)>) -> End {
        End {
            reason: reason.into(),
            close,
            code: None,
            handshake: true,
        }
    }

    /// An end where the charger is not expected to answer our close (it
    /// stopped answering, or a new connection replaced it): the new
    /// connection must not wait for the old one's goodbye.
    pub(super) fn silent(reason: &'static str, close: CloseCode) -> End {
        End {
            handshake: false,
            ..End::new(reason, Some((close, reason)))
        }
    }
}

/// What a session is set up with.
pub struct Setup {
    pub id: String,
    pub proto: Protocol,
    pub cfg: Arc<Config>,
    /// The cloud's URL for this charger; `None`: standalone.
    pub cloud_url: Option<String>,
    pub backoff: Option<Backoff>,
    /// What a previous session left queued, and its id map.
    pub outbox: Vec<(u64, Entry)>,
    pub tx_map: Vec<(i64, i64)>,
}

/// What `answer_locally` does with the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Not a queued message.
    No,
    /// Queue it now (it arrived while the gateway answers alone).
    Push,
    /// It is queued under this key already (sent, but the cloud did not
    /// answer in time): record the local transaction id on it.
    Update(u64),
}

/// The outbox entry that is with the cloud right now.
pub struct InFlight {
    pub msg_id: String,
    pub key: u64,
    pub sent: Instant,
    /// The charger waits for this answer (sent directly under its id).
    pub direct: bool,
}

/// What the cloud missed while the gateway answered alone.
#[derive(Debug, Default)]
pub struct Resync {
    /// The payload of a BootNotification the gateway answered itself.
    pub boot: Option<String>,
    /// The latest StatusNotification payload per connector.
    pub statuses: BTreeMap<u64, String>,
    /// The resync message with the cloud now.
    pub in_flight: Option<ResyncInFlight>,
}

/// A resync message with the cloud, waiting for its answer.
#[derive(Debug)]
pub struct ResyncInFlight {
    pub msg_id: String,
    pub action: &'static str,
    /// The connector of a StatusNotification; `None` for the boot.
    pub connector: Option<u64>,
    pub sent: Instant,
}

impl Resync {
    /// Nothing for the cloud to catch up on.
    pub fn is_idle(&self) -> bool {
        self.boot.is_none() && self.statuses.is_empty()
    }
}
