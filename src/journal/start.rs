//! What start reads: the live state from the `state` table plus the
//! history after it (`rebuild`), and, once, the history an older version
//! kept in redb's `events` table moved into segment files (`migrate`).

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::history::History;
use super::*;

#[derive(Serialize, Deserialize)]
pub(super) struct Stored {
    pub(super) time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) charger: Option<String>,
    #[serde(flatten)]
    pub(super) event: Event,
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

/// What start found on disk.
pub(super) struct Found {
    /// The live state: the state table plus the history after it.
    pub state: LiveState,
    /// The state table as stored (what the writer need not write again).
    pub stored: std::collections::HashMap<String, crate::state::ChargerState>,
    /// The last record folded into the stored state.
    pub state_seq: u64,
    /// Chargers the history after the stored state changed.
    pub touched: std::collections::HashSet<String>,
    pub min_local_tx: i64,
    pub outbox_key: u64,
    /// Bytes of the queued outbox entries.
    pub queued_bytes: i64,
}

pub(super) fn rebuild(db: &Database, history: &History) -> Result<Found, JournalError> {
    let r = db.begin_read()?;
    let meta = r.open_table(META)?;
    let state_seq = meta.get("state_seq")?.map_or(0, |v| v.value()).max(0) as u64;
    let mut state = LiveState {
        last_seq: state_seq,
        ..Default::default()
    };
    let mut stored = std::collections::HashMap::new();
    for entry in r.open_table(STATE)?.iter()? {
        let (k, v) = entry?;
        match serde_json::from_slice::<crate::state::ChargerState>(v.value()) {
            Ok(c) => {
                stored.insert(k.value().to_string(), c.durable_part());
                state.chargers.insert(k.value().to_string(), Arc::new(c));
            }
            Err(e) => log::warn!("stored state of {} unreadable, skipped: {e}", k.value()),
        }
    }
    let mut touched = std::collections::HashSet::new();
    let mut min_local_tx = meta.get("min_local_tx")?.map_or(0, |v| v.value());
    for rec in history.after(state_seq)? {
        min_local_tx = min_local_tx.min(writer::local_tx_of(&rec.event));
        state.apply(&rec);
        writer::touch(&mut touched, &state, &rec);
    }
    let outbox_key = meta.get("outbox_key")?.map_or(0, |v| v.value()).max(0) as u64;
    let mut queued_bytes = 0;
    for row in r.open_table(outbox::OUTBOX)?.iter()? {
        queued_bytes += row?.1.value().len() as i64;
    }
    Ok(Found {
        queued_bytes,
        state,
        stored,
        state_seq,
        touched,
        min_local_tx,
        outbox_key,
    })
}

/// Move history kept in redb by earlier versions into segment files, and
/// the state folded from it into the state table. Records already moved
/// (a crash during the move) are not moved twice.
pub(super) fn migrate(db: &Database, history: &mut History) -> Result<bool, JournalError> {
    let w = db.begin_write()?;
    let mut state = LiveState::default();
    let mut moved = 0u64;
    {
        let events = w.open_table(EVENTS)?;
        if events.is_empty()? {
            drop(events);
            w.abort()?;
            return Ok(false);
        }
        let done = history.last().0;
        let mut batch = Vec::new();
        for entry in events.iter()? {
            let (k, v) = entry?;
            let Ok(rec) = decode(k.value(), v.value()) else {
                continue;
            };
            state.apply(&rec);
            if rec.seq > done {
                batch.push(rec);
            }
            if batch.len() >= MAX_BATCH {
                history.append(&batch)?;
                moved += batch.len() as u64;
                batch.clear();
            }
        }
        moved += batch.len() as u64;
        history.append(&batch)?;
        let mut table = w.open_table(STATE)?;
        for (id, c) in &state.chargers {
            table.insert(id.as_str(), serde_json::to_vec(c)?.as_slice())?;
        }
        w.open_table(META)?
            .insert("state_seq", state.last_seq as i64)?;
    }
    w.delete_table(EVENTS)?;
    w.delete_table(BY_CHARGER)?;
    w.commit()?;
    log::info!("journal: {moved} records moved from the database to segment files");
    Ok(true)
}
