//! The journal's one writer thread. It owns every write transaction and
//! decides when to write, by what each append needs:
//!
//! - A durable append (`commit`, `record_durable`: what the gateway vouches
//!   for) is written, with everything staged before it, in one transaction
//!   that ends with fsync; its caller hears back only then. Appends that
//!   queued together share that fsync (group commit).
//! - Any other append (relayed history, an answered replay's bookkeeping
//!   that the cloud vouched for) is staged in memory: numbered, folded into
//!   the live state and streamed at once, and written with the next write,
//!   at the latest `commit_interval` after the first of them. A power cut
//!   loses at most that much relayed history. Fewer, larger transactions
//!   are what an SD card lives on: redb rewrites its B-tree pages and
//!   fsyncs once per commit, however small the commit.
//!
//! Records wait for the write that holds them only when a durable append
//! came before them in the same round, so the live stream keeps their order.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use redb::{Database, ReadableTable};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    decode, now_ms, Append, JournalConfig, JournalError, Msg, Op, Stored, BY_CHARGER, EVENTS,
    MAX_BATCH, MAX_TRIM, META, RECORD_OVERHEAD,
};
use crate::auth;
use crate::event::{Event, Record, Source};
use crate::outbox;
use crate::state::LiveState;

/// Staged operations at most, before they are written whatever the time.
const MAX_STAGED: usize = 20_000;

/// The database, shared by the writer and readers, and swapped by the
/// writer when it has to reopen it: after an I/O error (a full disk) redb
/// refuses every later transaction until the database is reopened.
#[derive(Clone)]
pub(super) struct Shared(pub(super) Arc<std::sync::RwLock<Option<Arc<Database>>>>);

impl Shared {
    pub(super) fn get(&self) -> Result<Arc<Database>, JournalError> {
        let g = self.0.read().unwrap_or_else(|p| p.into_inner());
        g.clone().ok_or(JournalError::Reopening)
    }
}

/// Opens the database again (same file or backend).
pub(super) type Reopen = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send>;

/// One staged operation, in arrival order.
enum Staged {
    Event(Record),
    Op(Op),
}

/// A durable append's caller, and the numbers it will be told.
type Waiter = (oneshot::Sender<Result<Vec<u64>, JournalError>>, Vec<u64>);

pub(super) struct Writer {
    pub db: Shared,
    pub reopen: Reopen,
    pub cfg: JournalConfig,
    pub stream: broadcast::Sender<Arc<Record>>,
    pub state: Arc<Mutex<LiveState>>,
    pub alarm: Arc<Mutex<Option<String>>>,
    /// Staged records not yet written, for readers of the journal.
    pub unwritten: Arc<Mutex<Vec<Record>>>,
    /// Commits failed in a row (disk full, I/O errors).
    pub failed_commits: u64,
    /// The last sequence number handed out, and the last record time.
    pub seq: u64,
    pub time: i64,
    staged: Vec<Staged>,
    /// Records shown only once written (a durable append came first).
    held: Vec<Record>,
    waiters: Vec<Waiter>,
    /// When the oldest staged operation arrived.
    since: Option<Instant>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        db: Shared,
        reopen: Reopen,
        cfg: JournalConfig,
        stream: broadcast::Sender<Arc<Record>>,
        state: Arc<Mutex<LiveState>>,
        alarm: Arc<Mutex<Option<String>>>,
        unwritten: Arc<Mutex<Vec<Record>>>,
        last: (u64, i64),
    ) -> Writer {
        Writer {
            db,
            reopen,
            cfg,
            stream,
            state,
            alarm,
            unwritten,
            failed_commits: 0,
            seq: last.0,
            time: last.1,
            staged: Vec::new(),
            held: Vec::new(),
            waiters: Vec::new(),
            since: None,
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut closing = None;
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(a) => self.stage(a),
                    Msg::Close(done) => closing = Some(done),
                    Msg::Tick => {}
                }
                taken += 1;
                if closing.is_none() && taken < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let due = closing.is_some()
                || !self.waiters.is_empty()
                || self.staged.len() >= MAX_STAGED
                || self
                    .since
                    .is_some_and(|t| t.elapsed() >= self.cfg.commit_interval);
            if due {
                self.write_staged();
            }
            if closing.is_some() {
                break;
            }
        }
        // Shut down without a Close (every handle dropped): write what is
        // staged all the same.
        self.write_staged();
        rx.close();
        // Release the writer's handle on the database before saying it is
        // closed, so a reopen right after `close` finds the file free.
        drop(self);
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    /// Number an append's records and stage its operations.
    fn stage(&mut self, append: Append) {
        let Append { ops, done } = append;
        let mut res = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Event { charger, event } => {
                    self.seq += 1;
                    self.time = self.time.max(now_ms());
                    res.push(self.seq);
                    let rec = Record {
                        seq: self.seq,
                        time_ms: self.time,
                        charger,
                        event,
                    };
                    if done.is_some() || !self.waiters.is_empty() {
                        self.held.push(rec.clone());
                    } else {
                        self.show(rec.clone(), true);
                    }
                    self.staged.push(Staged::Event(rec));
                }
                Op::Outbox(o) => {
                    res.push(outbox_key(&o));
                    self.staged.push(Staged::Op(Op::Outbox(o)));
                }
                Op::Auth(o) => {
                    res.push(0);
                    self.staged.push(Staged::Op(Op::Auth(o)));
                }
            }
        }
        if let Some(done) = done {
            self.waiters.push((done, res));
        }
        self.since.get_or_insert_with(Instant::now);
    }

    /// Fold a record into the live state and stream it; `unwritten` while
    /// it is not on disk yet (readers of the journal see it meanwhile).
    fn show(&self, rec: Record, unwritten: bool) {
        if unwritten {
            self.unwritten
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(rec.clone());
        }
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&rec);
        let _ = self.stream.send(Arc::new(rec));
    }

    /// Write everything staged in one transaction (fsync), then answer the
    /// durable appends and show the records held for it.
    fn write_staged(&mut self) {
        if self.staged.is_empty() && self.failed_commits == 0 {
            // Nothing to write (a durable append of no operations: the
            // watchdog's probe, a local answer that journals nothing).
            for (done, res) in std::mem::take(&mut self.waiters) {
                let _ = done.send(Ok(res));
            }
            self.since = None;
            return;
        }
        if self.db.get().is_err() {
            self.try_reopen();
        }
        if self.failed_commits > 0 {
            // Storage works again, maybe: say in the journal what went
            // wrong, in the write that shows it works.
            self.seq += 1;
            self.time = self.time.max(now_ms());
            let rec = Record {
                seq: self.seq,
                time_ms: self.time,
                charger: None,
                event: Event::StorageAlarm {
                    error: self.alarm().unwrap_or_default(),
                    failed_commits: self.failed_commits,
                },
            };
            self.held.push(rec.clone());
            self.staged.push(Staged::Event(rec));
        }
        let staged = std::mem::take(&mut self.staged);
        let held = std::mem::take(&mut self.held);
        let waiters = std::mem::take(&mut self.waiters);
        self.since = None;
        let result = self.write(&staged);
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        match result {
            Ok(()) => {
                if let Ok(mut a) = self.alarm.lock() {
                    a.take();
                }
                self.failed_commits = 0;
                for rec in held {
                    self.show(rec, false);
                }
                for (done, res) in waiters {
                    let _ = done.send(Ok(res));
                }
            }
            Err(e) => {
                log::error!(
                    "journal commit failed, {} operations not stored: {e}",
                    staged.len()
                );
                if let (Ok(mut a), false) =
                    (self.alarm.lock(), matches!(e, JournalError::Reopening))
                {
                    // Keep the root cause (the full disk), not its echo.
                    *a = Some(e.to_string());
                }
                self.failed_commits += 1;
                self.try_reopen();
                let e = Arc::new(e);
                for (done, _) in waiters {
                    let _ = done.send(Err(JournalError::Batch(e.clone())));
                }
            }
        }
    }

    /// Close and reopen the database so that the next commit can succeed
    /// once storage works again. Readers holding the old handle keep it
    /// open a moment longer; then the next failure tries again.
    fn try_reopen(&mut self) {
        let mut slot = self.db.0.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            match Arc::try_unwrap(old) {
                Ok(db) => drop(db),
                Err(still_shared) => {
                    *slot = Some(still_shared);
                    return;
                }
            }
        }
        match (self.reopen)() {
            Ok(db) => {
                log::warn!("journal reopened after a storage error");
                *slot = Some(Arc::new(db));
            }
            Err(e) => log::error!("cannot reopen the journal yet: {e}"),
        }
    }

    fn alarm(&self) -> Option<String> {
        self.alarm.lock().ok().and_then(|a| a.clone())
    }

    fn write(&self, staged: &[Staged]) -> Result<(), JournalError> {
        let w = self.db.get()?.begin_write()?;
        {
            let mut ob = outbox::Tables {
                outbox: w.open_table(outbox::OUTBOX)?,
                dead: w.open_table(outbox::DEAD)?,
                txmap: w.open_table(outbox::TXMAP)?,
            };
            let mut au = auth::Tables {
                cache: w.open_table(auth::CACHE)?,
                list: w.open_table(auth::LIST)?,
                version: w.open_table(auth::LIST_VERSION)?,
            };
            let mut events = w.open_table(EVENTS)?;
            let mut idx = w.open_table(BY_CHARGER)?;
            let mut meta = w.open_table(META)?;
            let mut bytes = meta.get("bytes")?.map_or(0, |v| v.value());
            let mut min_local_tx = meta.get("min_local_tx")?.map_or(0, |v| v.value());
            let mut next_key = meta.get("outbox_key")?.map_or(0, |v| v.value()).max(0) as u64;
            for s in staged {
                let rec = match s {
                    Staged::Op(Op::Auth(o)) => {
                        au.apply(o)?;
                        continue;
                    }
                    Staged::Op(Op::Outbox(o)) => {
                        ob.apply(o, &mut next_key, self.time)?;
                        continue;
                    }
                    Staged::Op(Op::Event { .. }) => continue, // staged as records
                    Staged::Event(rec) => rec,
                };
                let stored = Stored {
                    time_ms: rec.time_ms,
                    charger: rec.charger.clone(),
                    event: rec.event.clone(),
                };
                let value = serde_json::to_vec(&stored)?;
                events.insert(rec.seq, value.as_slice())?;
                if let Some(c) = &rec.charger {
                    idx.insert((c.as_str(), rec.seq), ())?;
                }
                bytes += value.len() as i64 + RECORD_OVERHEAD;
                if let Event::StartTransaction {
                    transaction_id: Some(id),
                    answered_by: Source::Gateway,
                    ..
                } = rec.event
                {
                    min_local_tx = min_local_tx.min(id);
                }
            }
            meta.insert("outbox_key", next_key as i64)?;
            bytes = self.trim(&mut events, &mut idx, bytes, self.time)?;
            meta.insert("last_time_ms", self.time)?;
            meta.insert("bytes", bytes)?;
            meta.insert("min_local_tx", min_local_tx)?;
        }
        w.commit()?;
        Ok(())
    }

    /// Drop the oldest records beyond the age or size limit, in the same
    /// transaction as the append, so the file stays bounded.
    fn trim(
        &self,
        events: &mut redb::Table<u64, &[u8]>,
        idx: &mut redb::Table<(&str, u64), ()>,
        mut bytes: i64,
        now: i64,
    ) -> Result<i64, JournalError> {
        let oldest_allowed = now - self.cfg.max_age.as_millis() as i64;
        for _ in 0..MAX_TRIM {
            let Some((seq, rec)) = events
                .first()?
                .map(|(k, v)| (k.value(), decode(k.value(), v.value())))
            else {
                break;
            };
            let too_big = bytes > self.cfg.max_bytes as i64;
            let too_old = rec.as_ref().map_or(true, |r| r.time_ms < oldest_allowed);
            if !too_big && !too_old {
                break;
            }
            let removed = events.remove(seq)?;
            bytes -= removed.map_or(0, |v| v.value().len() as i64) + RECORD_OVERHEAD;
            if let Ok(Record {
                charger: Some(c), ..
            }) = &rec
            {
                idx.remove((c.as_str(), seq))?;
            }
        }
        Ok(bytes.max(0))
    }
}

/// The key an outbox operation is about (0 for the id map).
fn outbox_key(op: &outbox::Op) -> u64 {
    match op {
        outbox::Op::Push { key, .. }
        | outbox::Op::Update { key, .. }
        | outbox::Op::Remove { key, .. }
        | outbox::Op::Kill { key, .. } => *key,
        outbox::Op::MapTx { .. } => 0,
    }
}
