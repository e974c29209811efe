//! The durable journal: an append-only event log in one redb database file,
//! with a sequence number, an index by charger, group commit, retention by
//! age and size, a live stream of committed records and the live state
//! folded from them. All storage access of the gateway goes through here.
//!
//! Why redb and not sled: sled 0.34 lost acknowledged writes in every cycle
//! of our power-loss test (it syncs with `sync_file_range`); redb commits
//! with fsync by default. See README "Why redb".
//!
//! One writer thread (`writer.rs`) owns every write transaction. Appends
//! queue on a bounded channel; the writer takes everything queued and
//! writes it in one transaction, so many chargers share one fsync. A
//! durable append returns only after the commit that holds it; relayed
//! history waits up to `commit_interval` for the next one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::auth;
use crate::event::{Event, Record};
use crate::outbox;
use crate::state::LiveState;

mod writer;
use writer::{Reopen, Shared, Writer};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const BY_CHARGER: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_charger");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

/// Fixed cost per record in the size accounting (keys, index entry).
const RECORD_OVERHEAD: i64 = 48;
/// Most records written in one transaction, so one commit stays short.
const MAX_BATCH: usize = 4096;
/// Most records trimmed per transaction, for the same reason.
const MAX_TRIM: usize = 4096;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open journal {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the journal's writer thread: {0}")]
    Thread(std::io::Error),
    #[error("journal storage error: {0}")]
    Storage(#[from] redb::Error),
    #[error("journal encoding error: {0}")]
    Encode(#[from] serde_json::Error),
    /// A commit that failed, as told to each writer in its batch.
    #[error(transparent)]
    Batch(Arc<JournalError>),
    #[error("journal is closed")]
    Closed,
    #[error("journal is being reopened after a storage error")]
    Reopening,
}

macro_rules! storage_err {
    ($($t:ty),*) => {$(impl From<$t> for JournalError {
        fn from(e: $t) -> Self { JournalError::Storage(e.into()) }
    })*};
}
storage_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<outbox::TableError> for JournalError {
    fn from(e: outbox::TableError) -> Self {
        match e {
            outbox::TableError::Storage(e) => JournalError::Storage(e.into()),
            outbox::TableError::Encode(e) => JournalError::Encode(e),
        }
    }
}

/// Retention and location settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub path: PathBuf,
    pub max_age: Duration,
    pub max_bytes: u64,
    /// Relayed history waits at most this long in memory before it is
    /// written (zero: written with every batch). What the gateway vouches
    /// for never waits.
    pub commit_interval: Duration,
}

/// A filter over the journal.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub charger: Option<String>,
    pub kinds: Vec<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only records after this sequence number (for following).
    pub after_seq: Option<u64>,
    /// The newest `limit` matching records are returned, oldest first.
    pub limit: usize,
}

/// One write to the database: journal events and outbox operations that
/// commit together.
#[derive(Debug, Clone)]
pub enum Op {
    Event {
        charger: Option<String>,
        event: Event,
    },
    Outbox(outbox::Op),
    Auth(auth::Op),
}

/// A batch of operations and who waits for them. The reply carries one
/// number per operation: the sequence number of an event, the key of an
/// outbox entry.
struct Append {
    ops: Vec<Op>,
    done: Option<oneshot::Sender<Result<Vec<u64>, JournalError>>>,
}

enum Msg {
    Append(Append),
    Close(oneshot::Sender<()>),
    /// Time passes: write what is staged if it has waited long enough.
    Tick,
}

/// Wake the writer a few times per commit interval. It holds only a weak
/// handle, so it ends with the journal.
fn spawn_ticker(tx: &mpsc::Sender<Msg>, interval: Duration) -> Result<(), JournalError> {
    let weak = tx.downgrade();
    let period = (interval / 4).max(Duration::from_millis(50));
    std::thread::Builder::new()
        .name("journal-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            let Some(tx) = weak.upgrade() else { return };
            // Full: the writer is busy and will look at the time anyway.
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Msg::Tick) {
                return;
            }
        })
        .map_err(JournalError::Thread)?;
    Ok(())
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    db: Shared,
    stream: broadcast::Sender<Arc<Record>>,
    state: Arc<Mutex<LiveState>>,
    alarm: Arc<Mutex<Option<String>>>,
    /// Records shown but not written yet (the writer's next commit).
    unwritten: Arc<Mutex<Vec<Record>>>,
    next_local_tx: AtomicI64,
    /// The last outbox key handed out.
    outbox_key: AtomicU64,
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Journal {
    /// Open (or create) the journal, rebuild the live state from it and start
    /// the writer thread.
    pub fn open(cfg: JournalConfig) -> Result<Journal, JournalError> {
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let path = cfg.path.clone();
        let reopen: Reopen = Box::new(move || Database::create(&path));
        let db = reopen().map_err(|source| JournalError::Open {
            path: cfg.path.clone(),
            source,
        })?;
        Self::start(db, cfg, reopen)
    }

    /// Open the journal on a storage backend of the caller's (tests use one
    /// that forgets unsynced writes, to cut the power at any point).
    pub fn open_with_backend<B: redb::StorageBackend + Clone>(
        backend: B,
        cfg: JournalConfig,
    ) -> Result<Journal, JournalError> {
        let reopen: Reopen =
            Box::new(move || redb::Builder::new().create_with_backend(backend.clone()));
        let db = reopen().map_err(|source| JournalError::Open {
            path: cfg.path.clone(),
            source,
        })?;
        Self::start(db, cfg, reopen)
    }

    fn start(db: Database, cfg: JournalConfig, reopen: Reopen) -> Result<Journal, JournalError> {
        let db = Arc::new(db);
        {
            let w = db.begin_write()?;
            w.open_table(EVENTS)?;
            w.open_table(BY_CHARGER)?;
            w.open_table(META)?;
            w.open_table(outbox::OUTBOX)?;
            w.open_table(outbox::DEAD)?;
            w.open_table(outbox::TXMAP)?;
            w.open_table(auth::CACHE)?;
            w.open_table(auth::LIST)?;
            w.open_table(auth::LIST_VERSION)?;
            w.commit()?;
        }
        let (state, min_local_tx, outbox_key) = rebuild(&db)?;
        let last = {
            let r = db.begin_read()?;
            let seq = r.open_table(EVENTS)?.last()?.map_or(0, |(k, _)| k.value());
            let time = r
                .open_table(META)?
                .get("last_time_ms")?
                .map_or(0, |v| v.value());
            (seq, time)
        };
        let state = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::channel(65_536);
        let (stream, _) = broadcast::channel(4096);
        let alarm = Arc::new(Mutex::new(None));
        let db = Shared(Arc::new(std::sync::RwLock::new(Some(db))));
        let unwritten = Arc::new(Mutex::new(Vec::new()));
        if !cfg.commit_interval.is_zero() {
            spawn_ticker(&tx, cfg.commit_interval)?;
        }
        let writer = Writer::new(
            db.clone(),
            reopen,
            cfg,
            stream.clone(),
            state.clone(),
            alarm.clone(),
            unwritten.clone(),
            last,
        );
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(JournalError::Thread)?;
        Ok(Journal {
            inner: Arc::new(Inner {
                tx,
                db,
                stream,
                state,
                alarm,
                unwritten,
                next_local_tx: AtomicI64::new(min_local_tx.min(0) - 1),
                outbox_key: AtomicU64::new(outbox_key),
            }),
        })
    }

    /// Append an event without waiting for it to be on disk (history: the
    /// gateway vouches for nothing). It is shown at once and written with
    /// the next commit, within `commit_interval`.
    pub async fn record(&self, charger: Option<&str>, event: Event) {
        let ops = vec![Op::Event {
            charger: charger.map(str::to_string),
            event,
        }];
        self.submit(ops).await;
    }

    /// Append an event and wait until the commit that holds it returns.
    pub async fn record_durable(
        &self,
        charger: Option<&str>,
        event: Event,
    ) -> Result<u64, JournalError> {
        let ops = vec![Op::Event {
            charger: charger.map(str::to_string),
            event,
        }];
        Ok(self.commit(ops).await?[0])
    }

    /// Queue operations for the next commit without waiting for it (within
    /// `commit_interval`, or with the next durable append). Order with
    /// later writes is kept (one writer); only a crash before that commit
    /// can lose them.
    pub async fn submit(&self, ops: Vec<Op>) {
        if self
            .inner
            .tx
            .send(Msg::Append(Append { ops, done: None }))
            .await
            .is_err()
        {
            log::warn!("journal closed; write dropped");
        }
    }

    /// Write events and outbox operations in one transaction and wait until
    /// it is committed. Returns one number per operation (see `Op`).
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<u64>, JournalError> {
        let (done, rx) = oneshot::channel();
        let msg = Msg::Append(Append {
            ops,
            done: Some(done),
        });
        self.inner
            .tx
            .send(msg)
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// What is queued for a charger, oldest first.
    pub fn outbox(&self, charger: &str) -> Result<Vec<(u64, outbox::Entry)>, JournalError> {
        let r = self.inner.db.get()?.begin_read()?;
        outbox::load(&r.open_table(outbox::OUTBOX)?, charger).map_err(JournalError::from)
    }

    /// What is known of an id tag for a charger: its local list from the
    /// cloud, then the site-wide authorization cache.
    pub fn auth_lookup(&self, charger: &str, id_tag: &str) -> Option<auth::TagInfo> {
        let r = self.inner.db.get().ok()?.begin_read().ok()?;
        auth::lookup(
            &r.open_table(auth::LIST).ok()?,
            &r.open_table(auth::CACHE).ok()?,
            charger,
            id_tag,
        )
    }

    /// The version of the local list the cloud last sent a charger.
    pub fn local_list_version(&self, charger: &str) -> Option<i64> {
        let r = self.inner.db.get().ok()?.begin_read().ok()?;
        let t = r.open_table(auth::LIST_VERSION).ok()?;
        t.get(charger).ok()?.map(|v| v.value())
    }

    /// A charger's dead letters, oldest first.
    pub fn dead_letters(&self, charger: &str) -> Result<Vec<outbox::DeadLetter>, JournalError> {
        let r = self.inner.db.get()?.begin_read()?;
        outbox::load_dead(&r.open_table(outbox::DEAD)?, charger).map_err(JournalError::from)
    }

    /// A charger's map of local to cloud transaction ids.
    pub fn tx_map(&self, charger: &str) -> Result<Vec<(i64, i64)>, JournalError> {
        let r = self.inner.db.get()?.begin_read()?;
        outbox::load_map(&r.open_table(outbox::TXMAP)?, charger).map_err(JournalError::from)
    }

    /// Outbox depth, oldest entry and dead letters of a charger.
    pub fn outbox_stats(&self, charger: &str) -> Result<outbox::Stats, JournalError> {
        // Counted, not decoded: the status page asks for this every few
        // seconds, and an outage can leave 100,000 entries queued.
        let r = self.inner.db.get()?.begin_read()?;
        let range = (charger, 0)..=(charger, u64::MAX);
        let queued = r.open_table(outbox::OUTBOX)?;
        let mut entries = queued.range(range.clone())?;
        let (oldest_ms, mut depth) = match entries.next() {
            Some(first) => (
                serde_json::from_slice::<outbox::Entry>(first?.1.value())
                    .ok()
                    .map(|e| e.queued_ms),
                1,
            ),
            None => (None, 0),
        };
        depth += entries.count() as u64;
        let dead_letters = r.open_table(outbox::DEAD)?.range(range)?.count() as u64;
        Ok(outbox::Stats {
            depth,
            oldest_ms,
            dead_letters,
        })
    }

    /// Commit everything queued so far, then stop the writer. Later appends
    /// fail with `Closed`.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// New committed records, as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.inner.stream.subscribe()
    }

    /// A snapshot of the live state.
    pub fn state(&self) -> LiveState {
        self.inner
            .state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The last storage failure, if the journal is in trouble.
    pub fn alarm(&self) -> Option<String> {
        self.inner.alarm.lock().ok().and_then(|a| a.clone())
    }

    /// A fresh local transaction id. Local ids are negative, so they can
    /// never collide with a cloud's (positive) ids; the id is on disk before
    /// a charger sees it, because the StartTransaction event that carries it
    /// is committed before the answer goes out.
    pub fn next_local_tx_id(&self) -> i64 {
        self.inner.next_local_tx.fetch_sub(1, Ordering::SeqCst)
    }

    /// A fresh outbox key, for an [`outbox::Op::Push`]: known before the
    /// entry is stored, so that a session can keep an entry in memory and
    /// store it only when it has to vouch for it.
    pub fn next_outbox_key(&self) -> u64 {
        self.inner.outbox_key.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records matching `q`, oldest first.
    pub fn query(&self, q: &Query) -> Result<Vec<Record>, JournalError> {
        let r = self.inner.db.get()?.begin_read()?;
        let events = r.open_table(EVENTS)?;
        let after = q.after_seq.map_or(0, |s| s + 1);
        let limit = if q.limit == 0 { usize::MAX } else { q.limit };
        let mut out = Vec::new();
        let mut take = |rec: Record| -> bool {
            if q.since_ms.is_some_and(|s| rec.time_ms < s) {
                return false; // times never decrease: nothing older can match
            }
            let kind_ok = q.kinds.is_empty()
                || q.kinds
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(rec.event.kind()));
            if kind_ok && q.until_ms.is_none_or(|u| rec.time_ms <= u) {
                out.push(rec);
            }
            out.len() < limit
        };
        // Newest first: what is not written yet, then the file.
        let unwritten: Vec<Record> = self
            .inner
            .unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .filter(|rec| rec.seq >= after)
            .filter(|rec| q.charger.is_none() || rec.charger == q.charger)
            .cloned()
            .collect();
        let first_unwritten = unwritten.last().map_or(u64::MAX, |rec| rec.seq);
        for rec in unwritten {
            if !take(rec) {
                out.reverse();
                return Ok(out);
            }
        }
        match &q.charger {
            Some(c) => {
                let idx = r.open_table(BY_CHARGER)?;
                for entry in idx
                    .range((c.as_str(), after)..=(c.as_str(), u64::MAX))?
                    .rev()
                {
                    let seq = entry?.0.value().1;
                    if seq >= first_unwritten {
                        continue; // written just now, and taken above
                    }
                    if let Some(v) = events.get(seq)? {
                        if !take(decode(seq, v.value())?) {
                            break;
                        }
                    }
                }
            }
            None => {
                for entry in events.range(after..)?.rev() {
                    let (k, v) = entry?;
                    if k.value() >= first_unwritten {
                        continue; // written just now, and taken above
                    }
                    if !take(decode(k.value(), v.value())?) {
                        break;
                    }
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Number of records and the highest sequence number.
    pub fn stats(&self) -> Result<(u64, u64), JournalError> {
        let r = self.inner.db.get()?.begin_read()?;
        let t = r.open_table(EVENTS)?;
        let last = t.last()?.map_or(0, |(k, _)| k.value());
        Ok((t.len()?, last))
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    charger: Option<String>,
    #[serde(flatten)]
    event: Event,
}

pub(super) fn decode(seq: u64, bytes: &[u8]) -> Result<Record, JournalError> {
    let s: Stored = serde_json::from_slice(bytes)?;
    Ok(Record {
        seq,
        time_ms: s.time_ms,
        charger: s.charger,
        event: s.event,
    })
}

fn rebuild(db: &Database) -> Result<(LiveState, i64, u64), JournalError> {
    let r = db.begin_read()?;
    let events = r.open_table(EVENTS)?;
    let mut state = LiveState::default();
    for entry in events.iter()? {
        let (k, v) = entry?;
        match decode(k.value(), v.value()) {
            Ok(rec) => state.apply(&rec),
            Err(e) => log::warn!("journal record {} unreadable, skipped: {e}", k.value()),
        }
    }
    let meta = r.open_table(META)?;
    let min_local_tx = meta.get("min_local_tx")?.map_or(0, |v| v.value());
    let outbox_key = meta.get("outbox_key")?.map_or(0, |v| v.value()).max(0) as u64;
    Ok((state, min_local_tx, outbox_key))
}

/// The journal file inside a data directory.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("journal.redb")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Link, Source};

    fn open(dir: &Path, max_bytes: u64) -> Journal {
        open_with(dir, max_bytes, Duration::ZERO)
    }

    fn open_with(dir: &Path, max_bytes: u64, commit_interval: Duration) -> Journal {
        Journal::open(JournalConfig {
            path: path_in(dir),
            max_age: Duration::from_secs(3600),
            max_bytes,
            commit_interval,
        })
        .unwrap()
    }

    /// Records in the file (not counting what is staged in memory).
    fn written(j: &Journal) -> u64 {
        j.stats().unwrap().0
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..1000 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out");
    }

    #[tokio::test]
    async fn relayed_history_is_shown_at_once_and_written_with_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let j = open_with(dir.path(), 1 << 30, Duration::from_secs(60));
        let mut live = j.subscribe();
        for _ in 0..3 {
            j.record(Some("A"), connect()).await;
        }
        for seq in 1..=3 {
            assert_eq!(live.recv().await.unwrap().seq, seq, "streamed at once");
        }
        let all = Query::default();
        assert_eq!(j.query(&all).unwrap().len(), 3, "readers see it at once");
        assert_eq!(written(&j), 0, "not written before the interval");
        // A durable append of nothing (the watchdog's probe) is answered
        // at once, and writes nothing.
        let probe = tokio::time::timeout(Duration::from_secs(5), j.commit(Vec::new())).await;
        assert!(matches!(probe, Ok(Ok(ref v)) if v.is_empty()), "{probe:?}");
        // A durable append writes everything staged before it, in order.
        assert_eq!(j.record_durable(Some("B"), connect()).await.unwrap(), 4);
        assert_eq!(written(&j), 4);
        let seqs: Vec<u64> = j.query(&all).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4], "each once");
        // Closing writes what is staged.
        j.record(Some("A"), connect()).await;
        j.close().await;
        drop(j);
        let j = open(dir.path(), 1 << 30);
        assert_eq!(written(&j), 5);
    }

    #[tokio::test]
    async fn staged_history_is_written_within_the_commit_interval() {
        let dir = tempfile::tempdir().unwrap();
        let j = open_with(dir.path(), 1 << 30, Duration::from_millis(300));
        j.record(Some("A"), connect()).await;
        until(|| j.query(&Query::default()).unwrap().len() == 1).await;
        assert_eq!(written(&j), 0);
        until(|| written(&j) == 1).await;
    }

    fn connect() -> Event {
        Event::Connect {
            link: Link::Charger,
            remote: None,
            protocol: None,
        }
    }

    #[tokio::test]
    async fn durable_appends_survive_reopen_and_rebuild_state() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), 1 << 30);
        let s1 = j.record_durable(Some("A"), connect()).await.unwrap();
        let s2 = j.record_durable(Some("B"), connect()).await.unwrap();
        assert_eq!((s1, s2), (1, 2));
        assert_eq!(j.next_local_tx_id(), -1);
        j.close().await;
        drop(j);
        let j = open(dir.path(), 1 << 30);
        assert!(j.state().chargers["A"].charger_link.up);
        assert_eq!(
            j.query(&Query {
                charger: Some("B".into()),
                ..Default::default()
            })
            .unwrap()
            .len(),
            1
        );
        assert!(j.record_durable(Some("A"), connect()).await.unwrap() == 3);
    }

    #[tokio::test]
    async fn local_transaction_ids_are_never_reused_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), 1 << 30);
        let id = j.next_local_tx_id();
        let ev = Event::StartTransaction {
            connector: 1,
            id_tag: "t".into(),
            meter_start: 0,
            transaction_id: Some(id),
            transaction_ref: None,
            status: None,
            timestamp: "x".into(),
            answered_by: Source::Gateway,
        };
        j.record_durable(Some("A"), ev).await.unwrap();
        j.close().await;
        drop(j);
        let j = open(dir.path(), 1 << 30);
        assert!(j.next_local_tx_id() < id);
    }

    #[tokio::test]
    async fn query_filters_by_charger_kind_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), 1 << 30);
        for i in 0..10 {
            let c = if i % 2 == 0 { "A" } else { "B" };
            j.record(Some(c), connect()).await;
        }
        j.record_durable(
            Some("A"),
            Event::Disconnect {
                link: Link::Cloud,
                reason: "x".into(),
                code: None,
            },
        )
        .await
        .unwrap();
        let q = |charger: Option<&str>, kinds: &[&str], limit| Query {
            charger: charger.map(str::to_string),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            limit,
            ..Default::default()
        };
        assert_eq!(j.query(&q(Some("A"), &[], 0)).unwrap().len(), 6);
        assert_eq!(j.query(&q(None, &["disconnect"], 0)).unwrap().len(), 1);
        let last3 = j.query(&q(None, &[], 3)).unwrap();
        assert_eq!(
            last3.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![9, 10, 11]
        );
        let after = j
            .query(&Query {
                after_seq: Some(9),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(after.len(), 2);
    }

    #[tokio::test]
    async fn size_retention_trims_the_oldest_records() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), 2_000);
        for _ in 0..200 {
            j.record_durable(Some("A"), connect()).await.unwrap();
        }
        let (count, last) = j.stats().unwrap();
        assert_eq!(last, 200);
        assert!(count < 50, "{count} records kept");
        let kept = j
            .query(&Query {
                charger: Some("A".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(kept.len() as u64, count, "index trimmed with the records");
        assert_eq!(kept.last().unwrap().seq, 200);
    }
}
