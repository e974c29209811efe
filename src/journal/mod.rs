//! The durable journal: an append-only event log (the history, in segment
//! files: `history.rs`), and in one redb database file the outbox, the
//! id map, the authorization cache and the live state of every charger
//! (`state` table), with group commit, fair retention by age and size, a
//! live stream of committed records and the live state folded from them.
//! All storage access of the gateway goes through here.
//!
//! Why redb and not sled: sled 0.34 lost acknowledged writes in every cycle
//! of our power-loss test (it syncs with `sync_file_range`); redb commits
//! with fsync by default. See README "Why redb".
//!
//! One writer thread (`writer.rs`) owns every write. Appends queue on a
//! bounded channel; the writer takes everything queued and writes it in
//! one append to the history and one redb transaction, so many chargers
//! share one fsync. A durable append returns only after both; relayed
//! history waits up to `commit_interval` for the next write.
//!
//! Start reads the state table, not the history: the state as of the
//! last write, plus the records after it (the state is written at least
//! every `TAIL_MAX` records), so start time does not grow with the
//! journal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::auth;
use crate::event::{Event, Record};
use crate::outbox;
use crate::state::LiveState;

pub mod history;
mod start;
mod writer;
use history::History;
use start::{migrate, rebuild, Found};
use writer::{Reopen, Shared, Writer};

/// Where history was kept before it moved to segment files; read once to
/// move it there.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const BY_CHARGER: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_charger");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Charger id → its live state (JSON), as of `meta.state_seq`.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// Most records written in one transaction, so one commit stays short.
const MAX_BATCH: usize = 4096;
/// Most records after the stored state: past this the state is written
/// again even if nothing in it that must survive changed, so start folds
/// at most this many.
const TAIL_MAX: u64 = 20_000;

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
    #[error("journal history error: {0}")]
    History(#[from] std::io::Error),
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
    history: Arc<Mutex<History>>,
    stream: broadcast::Sender<Arc<Record>>,
    state: Arc<Mutex<LiveState>>,
    alarm: Arc<Mutex<Option<String>>>,
    /// Records shown but not written yet (the writer's next commit).
    unwritten: Arc<Mutex<Vec<Record>>>,
    next_local_tx: AtomicI64,
    /// The last outbox key handed out.
    outbox_key: AtomicU64,
    /// Bytes of queued outbox entries, and how many may be queued.
    queued_bytes: Arc<AtomicI64>,
    max_queued_bytes: u64,
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
        let dir = history_dir(&cfg.path);
        let history = history::FsDir::new(&dir, segment_bytes(cfg.max_bytes))
            .map_err(|source| JournalError::CreateDir { path: dir, source })?;
        Self::start(db, Arc::new(history), cfg, reopen)
    }

    /// Open the journal on storage of the caller's: a redb backend and a
    /// directory for the history (tests use ones that forget unsynced
    /// writes, to cut the power at any point).
    pub fn open_with_backend<B: redb::StorageBackend + Clone>(
        backend: B,
        history: Arc<dyn history::Dir>,
        cfg: JournalConfig,
    ) -> Result<Journal, JournalError> {
        let reopen: Reopen =
            Box::new(move || redb::Builder::new().create_with_backend(backend.clone()));
        let db = reopen().map_err(|source| JournalError::Open {
            path: cfg.path.clone(),
            source,
        })?;
        Self::start(db, history, cfg, reopen)
    }

    fn start(
        db: Database,
        dir: Arc<dyn history::Dir>,
        cfg: JournalConfig,
        reopen: Reopen,
    ) -> Result<Journal, JournalError> {
        let mut db = db;
        let mut history = History::open(dir, segment_bytes(cfg.max_bytes))?;
        if migrate(&db, &mut history)? {
            // Give back the space the old history took.
            if let Err(e) = db.compact() {
                log::warn!("journal: cannot compact the database after moving history: {e}");
            }
        }
        let db = Arc::new(db);
        {
            let w = db.begin_write()?;
            w.open_table(META)?;
            w.open_table(STATE)?;
            w.open_table(outbox::OUTBOX)?;
            w.open_table(outbox::DEAD)?;
            w.open_table(outbox::TXMAP)?;
            w.open_table(auth::CACHE)?;
            w.open_table(auth::LIST)?;
            w.open_table(auth::LIST_VERSION)?;
            w.commit()?;
        }
        let found = rebuild(&db, &history)?;
        let last = {
            let (seq, time) = history.last();
            (seq.max(found.state.last_seq), time)
        };
        let state = Arc::new(Mutex::new(found.state.clone()));
        let queued_bytes = Arc::new(AtomicI64::new(found.queued_bytes));
        let max_queued_bytes = cfg.max_bytes / 2;
        let history = Arc::new(Mutex::new(history));
        let (tx, rx) = mpsc::channel(65_536);
        let (stream, _) = broadcast::channel(4096);
        let alarm = Arc::new(Mutex::new(None));
        let db = Shared(Arc::new(std::sync::RwLock::new(Some(db))));
        let unwritten = Arc::new(Mutex::new(Vec::new()));
        if !cfg.commit_interval.is_zero() {
            spawn_ticker(&tx, cfg.commit_interval)?;
        }
        let writer = Writer::new(
            writer::Parts {
                db: db.clone(),
                reopen,
                history: history.clone(),
                cfg,
                stream: stream.clone(),
                state: state.clone(),
                alarm: alarm.clone(),
                unwritten: unwritten.clone(),
                queued_bytes: queued_bytes.clone(),
            },
            last,
            &found,
        );
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(JournalError::Thread)?;
        Ok(Journal {
            inner: Arc::new(Inner {
                tx,
                db,
                history,
                stream,
                state,
                alarm,
                unwritten,
                next_local_tx: AtomicI64::new(found.min_local_tx.min(0) - 1),
                outbox_key: AtomicU64::new(found.outbox_key),
                queued_bytes,
                max_queued_bytes,
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

    /// Whether the outbox, all chargers together, holds half the
    /// journal's `max_size_mb` already: the gateway then vouches for no
    /// more transaction messages (the chargers keep them and retry), so
    /// the outbox cannot push the data directory past its limit.
    pub fn outbox_full(&self) -> bool {
        self.inner.queued_bytes.load(Ordering::Relaxed) as u64 > self.inner.max_queued_bytes
    }

    /// A fresh outbox key, for an [`outbox::Op::Push`]: known before the
    /// entry is stored, so that a session can keep an entry in memory and
    /// store it only when it has to vouch for it.
    pub fn next_outbox_key(&self) -> u64 {
        self.inner.outbox_key.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records matching `q`, oldest first.
    pub fn query(&self, q: &Query) -> Result<Vec<Record>, JournalError> {
        let (dir, segs) = {
            let h = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
            (h.dir(), h.segments())
        };
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
        // Newest first: what is not written yet, then the files.
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
        history::scan_back(
            &*dir,
            &segs,
            q.charger.as_deref(),
            after,
            q.since_ms,
            |rec| rec.seq >= first_unwritten || take(rec),
        )?;
        out.reverse();
        Ok(out)
    }

    /// Number of records written and the highest sequence number.
    pub fn stats(&self) -> Result<(u64, u64), JournalError> {
        let h = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
        Ok((h.totals().0, h.last().0))
    }
}

/// Segment size: small enough that retention can free space in steps
/// of a few percent of the limit, large enough to be few files.
fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 32).clamp(1024, 4 << 20)
}

/// Bytes the journal takes in a data directory: the database file and
/// the history's segments.
pub fn disk_bytes(data_dir: &Path) -> u64 {
    let db = std::fs::metadata(path_in(data_dir)).map_or(0, |m| m.len());
    let history = std::fs::read_dir(history_dir(&path_in(data_dir)))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
        })
        .unwrap_or(0);
    db + history
}

/// The history's directory beside the database file.
pub fn history_dir(db_path: &Path) -> PathBuf {
    db_path.with_file_name("history")
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

    /// Records written (not counting what is staged in memory).
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

    fn started(id: i64) -> Event {
        Event::StartTransaction {
            connector: 1,
            id_tag: "t".into(),
            meter_start: 0,
            transaction_id: Some(id),
            transaction_ref: None,
            status: None,
            timestamp: "x".into(),
            answered_by: Source::Cloud,
        }
    }

    #[tokio::test]
    async fn state_outlives_the_history_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), 40_000);
        j.record(Some("A"), connect()).await;
        j.record(Some("A"), started(42)).await;
        j.record_durable(
            Some("A"),
            Event::Override {
                mode: "pause".into(),
                limit_a: Some(0.0),
                until: None,
                source: Source::Cli,
            },
        )
        .await
        .unwrap();
        // Transactions on A's other connector, until retention drops
        // A's oldest records, its first start among them.
        for i in 0..2_000 {
            let mut e = started(1_000 + i);
            if let Event::StartTransaction { connector, .. } = &mut e {
                *connector = 2;
            }
            j.record(Some("A"), e).await;
        }
        j.close().await;
        drop(j);
        let j = open(dir.path(), 40_000);
        let kept = j
            .query(&Query {
                charger: Some("A".into()),
                ..Default::default()
            })
            .unwrap();
        assert!(kept.len() < 1_000, "retention worked: {}", kept.len());
        assert!(
            !kept.iter().any(|r| matches!(
                r.event,
                Event::StartTransaction {
                    transaction_id: Some(42),
                    ..
                }
            )),
            "the history no longer has the start"
        );
        let a = &j.state().chargers["A"];
        assert_eq!(a.transactions[&1].transaction_id, Some(42), "{a:?}");
        assert!(a.override_.as_ref().is_some_and(|o| o.pause), "{a:?}");
    }

    #[tokio::test]
    async fn history_kept_in_the_database_by_earlier_versions_is_moved_to_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(path_in(dir.path())).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(EVENTS).unwrap();
                let mut idx = w.open_table(BY_CHARGER).unwrap();
                for seq in 1..=3u64 {
                    let ev = if seq == 2 { started(7) } else { connect() };
                    let v = serde_json::to_vec(&start::Stored {
                        time_ms: 1_000 + seq as i64,
                        charger: Some("OLD".into()),
                        event: ev,
                    })
                    .unwrap();
                    t.insert(seq, v.as_slice()).unwrap();
                    idx.insert(("OLD", seq), ()).unwrap();
                }
            }
            w.commit().unwrap();
        }
        for _ in 0..2 {
            // Twice: the second open finds nothing left to move.
            let j = open(dir.path(), 1 << 30);
            let recs = j.query(&Query::default()).unwrap();
            let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
            assert_eq!(seqs[..3], [1, 2, 3], "moved once, in order");
            assert_eq!(
                j.state().chargers["OLD"].transactions[&1].transaction_id,
                Some(7)
            );
            assert!(j.record_durable(Some("OLD"), connect()).await.unwrap() > 3);
            j.close().await;
        }
        let db = Database::create(path_in(dir.path())).unwrap();
        let r = db.begin_read().unwrap();
        assert!(r.open_table(EVENTS).is_err(), "the old table is gone");
    }
}
