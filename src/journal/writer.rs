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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use redb::Database;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::history::{History, Limits};
use super::{
    now_ms, Append, Found, JournalConfig, JournalError, Msg, Op, MAX_BATCH, META, STATE, TAIL_MAX,
};
use crate::auth;
use crate::event::{Event, Record, Source};
use crate::outbox;
use crate::state::{ChargerState, LiveState};

/// Staged operations at most, before they are written whatever the time.
const MAX_STAGED: usize = 20_000;
/// How often chargers gone longer than the retention are forgotten.
const FORGET_EVERY_MS: i64 = 60_000;
/// A database file smaller than this is never worth compacting.
const COMPACT_ABOVE: u64 = 8 << 20;

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

/// What the writer shares with the journal's readers.
pub(super) struct Parts {
    pub db: Shared,
    pub reopen: Reopen,
    pub history: Arc<Mutex<History>>,
    pub cfg: JournalConfig,
    pub stream: broadcast::Sender<Arc<Record>>,
    pub state: Arc<Mutex<LiveState>>,
    pub alarm: Arc<Mutex<Option<String>>>,
    /// Staged records not yet written, for readers of the journal.
    pub unwritten: Arc<Mutex<Vec<Record>>>,
    /// Bytes of queued outbox entries, all chargers together.
    pub queued_bytes: Arc<std::sync::atomic::AtomicI64>,
}

/// The lowest local transaction id an event hands out (0 if none).
pub(super) fn local_tx_of(event: &Event) -> i64 {
    match event {
        Event::StartTransaction {
            transaction_id: Some(id),
            answered_by: Source::Gateway,
            ..
        } => (*id).min(0),
        _ => 0,
    }
}

/// One staged operation, in arrival order.
enum Staged {
    Event(Record),
    Op(Op),
}

/// A durable append's caller, and the numbers it will be told.
type Waiter = (oneshot::Sender<Result<Vec<u64>, JournalError>>, Vec<u64>);

pub(super) struct Writer {
    p: Parts,
    /// Commits failed in a row (disk full, I/O errors), and when the
    /// first of them failed.
    failed_commits: u64,
    failed_since: Option<i64>,
    /// The last sequence number handed out, and the last record time.
    seq: u64,
    time: i64,
    staged: Vec<Staged>,
    /// Records shown only once written (a durable append came first).
    held: Vec<Record>,
    waiters: Vec<Waiter>,
    /// When the oldest staged operation arrived.
    since: Option<Instant>,
    /// Each charger's state as the state table holds it (its durable
    /// part), the last record folded into it, and the chargers whose
    /// state changed since.
    stored: HashMap<String, ChargerState>,
    state_seq: u64,
    touched: HashSet<String>,
    /// What the meta table holds.
    min_local_tx: i64,
    outbox_key: u64,
    last_forget_ms: i64,
}

/// What one write puts in the database besides the operations.
#[derive(Default)]
struct StateWrite {
    rows: Vec<(String, Vec<u8>, ChargerState)>,
    removed: Vec<String>,
    state_seq: Option<u64>,
}

impl Writer {
    pub(super) fn new(p: Parts, last: (u64, i64), found: &Found) -> Writer {
        Writer {
            p,
            failed_commits: 0,
            failed_since: None,
            seq: last.0,
            time: last.1,
            staged: Vec::new(),
            held: Vec::new(),
            waiters: Vec::new(),
            since: None,
            stored: found.stored.clone(),
            state_seq: found.state_seq,
            touched: found.touched.clone(),
            min_local_tx: found.min_local_tx,
            outbox_key: found.outbox_key,
            last_forget_ms: 0,
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
                    .is_some_and(|t| t.elapsed() >= self.p.cfg.commit_interval);
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
    fn show(&mut self, rec: Record, unwritten: bool) {
        if unwritten {
            self.p
                .unwritten
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(rec.clone());
        }
        {
            let mut state = self.p.state.lock().unwrap_or_else(|p| p.into_inner());
            state.apply(&rec);
            touch(&mut self.touched, &state, &rec);
        }
        let _ = self.p.stream.send(Arc::new(rec));
    }

    /// Write everything staged (one append to the history and one redb
    /// transaction, each with fsync), then answer the durable appends and
    /// show the records held for it.
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
        if self.p.db.get().is_err() {
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
                    began_ms: self.failed_since,
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
        self.p
            .unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        match result {
            Ok(()) => {
                if let Ok(mut a) = self.p.alarm.lock() {
                    a.take();
                }
                self.failed_commits = 0;
                self.failed_since = None;
                for rec in held {
                    self.show(rec, false);
                }
                for (done, res) in waiters {
                    let _ = done.send(Ok(res));
                }
                self.retain();
            }
            Err(e) => {
                log::error!(
                    "journal commit failed, {} operations not stored: {e}",
                    staged.len()
                );
                if let (Ok(mut a), false) =
                    (self.p.alarm.lock(), matches!(e, JournalError::Reopening))
                {
                    // Keep the root cause (the full disk), not its echo.
                    *a = Some(e.to_string());
                }
                self.failed_commits += 1;
                self.failed_since.get_or_insert_with(now_ms);
                self.try_reopen();
                // A full disk: history is what can give space back.
                self.retain();
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
        let mut slot = self.p.db.0.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            match Arc::try_unwrap(old) {
                Ok(db) => drop(db),
                Err(still_shared) => {
                    *slot = Some(still_shared);
                    return;
                }
            }
        }
        match (self.p.reopen)() {
            Ok(db) => {
                log::warn!("journal reopened after a storage error");
                *slot = Some(Arc::new(db));
            }
            Err(e) => log::error!("cannot reopen the journal yet: {e}"),
        }
    }

    /// Give the database file's free pages back to the file system: redb
    /// reuses them but never shrinks its file, so after an outage's queue
    /// drained the file would keep its peak size. Done only with the queue
    /// empty (little to copy), and skipped when a reader holds the
    /// database.
    fn try_compact(&mut self, before: u64) {
        let mut slot = self.p.db.0.write().unwrap_or_else(|p| p.into_inner());
        let Some(shared) = slot.take() else { return };
        let mut db = match Arc::try_unwrap(shared) {
            Ok(db) => db,
            Err(still_shared) => {
                *slot = Some(still_shared);
                return;
            }
        };
        match db.compact() {
            Ok(_) => {
                let after = std::fs::metadata(&self.p.cfg.path).map_or(0, |m| m.len());
                log::info!("journal: database compacted from {before} to {after} bytes");
            }
            Err(e) => log::warn!("journal: cannot compact the database: {e}"),
        }
        *slot = Some(Arc::new(db));
    }

    fn alarm(&self) -> Option<String> {
        self.p.alarm.lock().ok().and_then(|a| a.clone())
    }

    /// The chargers whose state must be written again: those whose part
    /// that outlives a restart changed, or all touched ones when the
    /// history after the stored state grew long.
    fn state_to_write(&self) -> StateWrite {
        let state = self.p.state.lock().unwrap_or_else(|p| p.into_inner());
        let long_tail = state.last_seq.saturating_sub(self.state_seq) > TAIL_MAX;
        let mut out = StateWrite::default();
        for id in &self.touched {
            match state.chargers.get(id) {
                Some(c) => {
                    let durable = c.durable_part();
                    if long_tail || self.stored.get(id) != Some(&durable) {
                        match serde_json::to_vec(c) {
                            Ok(json) => out.rows.push((id.clone(), json, durable)),
                            Err(e) => log::warn!("state of {id} not stored: {e}"),
                        }
                    }
                }
                None if self.stored.contains_key(id) => out.removed.push(id.clone()),
                None => {}
            }
        }
        if long_tail || !out.rows.is_empty() || !out.removed.is_empty() {
            out.state_seq = Some(state.last_seq);
        }
        out
    }

    fn write(&mut self, staged: &[Staged]) -> Result<(), JournalError> {
        let records = || {
            staged.iter().filter_map(|s| match s {
                Staged::Event(rec) => Some(rec),
                Staged::Op(_) => None,
            })
        };
        self.p
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(records())?;
        let min_local_tx = records()
            .map(|r| local_tx_of(&r.event))
            .fold(self.min_local_tx, i64::min);
        let mut outbox_key = self.outbox_key;
        let has_ops = staged.iter().any(|s| matches!(s, Staged::Op(_)));
        let sw = self.state_to_write();
        let state_changed = sw.state_seq.is_some();
        if !has_ops && !state_changed && min_local_tx == self.min_local_tx {
            return Ok(()); // history only: redb untouched
        }
        let w = self.p.db.get()?.begin_write()?;
        let queued_delta = self.write_tables(&w, staged, &sw, &mut outbox_key, min_local_tx)?;
        w.commit()?;
        self.p
            .queued_bytes
            .fetch_add(queued_delta, std::sync::atomic::Ordering::Relaxed);
        self.outbox_key = outbox_key;
        self.min_local_tx = min_local_tx;
        // Every touched charger is now stored or had nothing to store
        // (what changes with every reading waits for the next change).
        self.touched.clear();
        if let Some(seq) = sw.state_seq {
            self.state_seq = seq;
            for (id, _, durable) in sw.rows {
                self.stored.insert(id, durable);
            }
            for id in sw.removed {
                self.stored.remove(&id);
            }
        }
        Ok(())
    }

    /// The redb side of a commit, in one write transaction: outbox and
    /// authorization operations, the state rows that changed, and the
    /// counters in `meta`. Returns the bytes the operations added to the
    /// queue.
    fn write_tables(
        &self,
        w: &redb::WriteTransaction,
        staged: &[Staged],
        sw: &StateWrite,
        outbox_key: &mut u64,
        min_local_tx: i64,
    ) -> Result<i64, JournalError> {
        let mut ob = outbox::Tables {
            outbox: w.open_table(outbox::OUTBOX)?,
            dead: w.open_table(outbox::DEAD)?,
            txmap: w.open_table(outbox::TXMAP)?,
            delta: 0,
        };
        let mut au = auth::Tables {
            cache: w.open_table(auth::CACHE)?,
            list: w.open_table(auth::LIST)?,
            version: w.open_table(auth::LIST_VERSION)?,
        };
        for s in staged {
            match s {
                Staged::Op(Op::Auth(o)) => au.apply(o)?,
                Staged::Op(Op::Outbox(o)) => {
                    ob.apply(o, outbox_key, self.time)?;
                }
                Staged::Op(Op::Event { .. }) | Staged::Event(_) => {}
            }
        }
        let mut table = w.open_table(STATE)?;
        for (id, json, _) in &sw.rows {
            table.insert(id.as_str(), json.as_slice())?;
        }
        for id in &sw.removed {
            table.remove(id.as_str())?;
        }
        let mut meta = w.open_table(META)?;
        if *outbox_key != self.outbox_key {
            meta.insert("outbox_key", *outbox_key as i64)?;
        }
        if min_local_tx != self.min_local_tx {
            meta.insert("min_local_tx", min_local_tx)?;
        }
        if let Some(seq) = sw.state_seq {
            meta.insert("state_seq", seq as i64)?;
        }
        Ok(ob.delta)
    }

    /// Retention: the history within its budget (the limit less what the
    /// database file takes) and age, and the state of chargers gone for
    /// longer than the age limit forgotten.
    fn retain(&mut self) {
        let now = self.time.max(now_ms());
        let max_age = self.p.cfg.max_age.as_millis() as i64;
        let db_bytes = std::fs::metadata(&self.p.cfg.path).map_or(0, |m| m.len());
        let max = self.p.cfg.max_bytes;
        let budget = max.saturating_sub(db_bytes).max(max / 4);
        let res = self
            .p
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trim(Limits {
                max_bytes: budget,
                oldest_ms: now - max_age,
            });
        if let Err(e) = res {
            log::error!("journal retention failed: {e}");
        }
        if now - self.last_forget_ms < FORGET_EVERY_MS {
            return;
        }
        self.last_forget_ms = now;
        let queued = self
            .p
            .queued_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if queued == 0 && db_bytes > max / 4 && db_bytes > COMPACT_ABOVE {
            self.try_compact(db_bytes);
        }
        let mut state = self.p.state.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = state
            .chargers
            .values()
            .filter(|c| !c.charger_link.up)
            .filter(|c| c.last_event_ms.is_none_or(|t| t < now - max_age))
            .map(|c| c.id.clone())
            .collect();
        for id in gone {
            log::info!("journal: {id} gone for longer than the retention; its state is forgotten");
            state.chargers.remove(&id);
            self.touched.insert(id);
        }
    }
}

/// Note which chargers a record changed.
pub(super) fn touch(touched: &mut HashSet<String>, state: &LiveState, rec: &Record) {
    match (&rec.charger, &rec.event) {
        (Some(c), _) => {
            touched.insert(c.clone());
        }
        // A restart changes every charger's links.
        (None, Event::GatewayStarted { .. }) => touched.extend(state.chargers.keys().cloned()),
        (None, _) => {}
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
