//! The durable outbox, per charger: transaction messages (StartTransaction,
//! StopTransaction, MeterValues of a transaction) waiting for the cloud's
//! answer, the dead letters the cloud refused for good, and the map from
//! local transaction ids to the cloud's. Tables and the write operations on
//! them; the journal's writer thread applies the operations, in the same
//! group commit as the journal events they go with.

use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::ocpp::Action;

/// (charger, key) → JSON `Entry`, in arrival order.
pub(crate) const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
/// (charger, key) → JSON `DeadLetter`.
pub(crate) const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead_letters");
/// (charger, local transaction id) → the cloud's transaction id.
pub(crate) const TXMAP: TableDefinition<(&str, i64), i64> = TableDefinition::new("txmap");

/// One queued message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub action: crate::ocpp::Action,
    /// The charger's payload, exactly as it sent it.
    pub payload: String,
    /// When the charger sent it (ms since the epoch).
    pub queued_ms: i64,
    /// How many times the cloud refused it so far.
    #[serde(default)]
    pub attempts: u32,
    /// The local transaction id the gateway handed out for this
    /// StartTransaction, when it answered it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_tx: Option<i64>,
}

/// A message the cloud refused too often, kept for people to look at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub key: u64,
    #[serde(flatten)]
    pub entry: Entry,
    pub error: String,
    pub dead_ms: i64,
}

/// Outbox figures for one charger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub depth: u64,
    pub oldest_ms: Option<i64>,
    pub dead_letters: u64,
}

/// A write on the outbox tables.
#[derive(Debug, Clone)]
pub enum Op {
    /// Queue a message; the result is its key.
    /// A new entry under `key`, from [`Journal::next_outbox_key`](crate::journal::Journal::next_outbox_key).
    Push {
        charger: String,
        key: u64,
        entry: Entry,
    },
    /// Replace a queued message (attempts, local id).
    Update {
        charger: String,
        key: u64,
        entry: Entry,
    },
    /// The cloud answered it.
    Remove { charger: String, key: u64 },
    /// Move it to the dead letters, as `entry` (with its final attempt count).
    Kill {
        charger: String,
        key: u64,
        entry: Entry,
        error: String,
    },
    /// Remember the cloud's id for a local transaction id.
    MapTx {
        charger: String,
        local: i64,
        cloud: i64,
    },
}

/// The tables a write transaction holds open for outbox operations.
pub(crate) struct Tables<'t> {
    pub outbox: Table<'t, (&'static str, u64), &'static [u8]>,
    pub dead: Table<'t, (&'static str, u64), &'static [u8]>,
    pub txmap: Table<'t, (&'static str, i64), i64>,
    /// Bytes the operations applied added to the queue (less what they
    /// removed).
    pub delta: i64,
}

/// A failed read or write of one of the journal's tables, with redb's or
/// serde's error kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Storage(#[from] redb::StorageError),
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Tables<'_> {
    /// Apply one operation; `next_key` keeps the highest key used, `now`
    /// stamps dead letters. Returns the entry's key.
    pub fn apply(&mut self, op: &Op, next_key: &mut u64, now: i64) -> Result<u64, TableError> {
        match op {
            Op::Push {
                charger,
                key,
                entry,
            }
            | Op::Update {
                charger,
                key,
                entry,
            } => {
                *next_key = (*next_key).max(*key);
                let v = serde_json::to_vec(entry)?;
                let old = self.outbox.insert((charger.as_str(), *key), v.as_slice())?;
                self.delta += v.len() as i64 - old.map_or(0, |o| o.value().len() as i64);
                Ok(*key)
            }
            Op::Remove { charger, key } => {
                let old = self.outbox.remove((charger.as_str(), *key))?;
                self.delta -= old.map_or(0, |o| o.value().len() as i64);
                Ok(*key)
            }
            Op::Kill {
                charger,
                key,
                entry,
                error,
            } => {
                let old = self.outbox.remove((charger.as_str(), *key))?;
                self.delta -= old.map_or(0, |o| o.value().len() as i64);
                let dl = DeadLetter {
                    key: *key,
                    entry: entry.clone(),
                    error: error.clone(),
                    dead_ms: now,
                };
                let v = serde_json::to_vec(&dl)?;
                self.dead.insert((charger.as_str(), *key), v.as_slice())?;
                Ok(*key)
            }
            Op::MapTx {
                charger,
                local,
                cloud,
            } => {
                self.txmap.insert((charger.as_str(), *local), *cloud)?;
                Ok(0)
            }
        }
    }
}

/// Everything queued for one charger, oldest first.
pub(crate) fn load(
    t: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    charger: &str,
) -> Result<Vec<(u64, Entry)>, TableError> {
    let mut out = Vec::new();
    for row in t.range((charger, 0)..=(charger, u64::MAX))? {
        let (k, v) = row?;
        match serde_json::from_slice::<Entry>(v.value()) {
            Ok(e) => out.push((k.value().1, e)),
            Err(e) => {
                log::error!(charger_id = charger; "outbox entry {} unreadable, left in place: {e}", k.value().1)
            }
        }
    }
    Ok(out)
}

/// Dead letters of one charger, oldest first.
pub(crate) fn load_dead(
    t: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    charger: &str,
) -> Result<Vec<DeadLetter>, TableError> {
    let mut out = Vec::new();
    for row in t.range((charger, 0)..=(charger, u64::MAX))? {
        let (_, v) = row?;
        if let Ok(d) = serde_json::from_slice::<DeadLetter>(v.value()) {
            out.push(d);
        }
    }
    Ok(out)
}

/// The transaction id map of one charger: (local, cloud).
pub(crate) fn load_map(
    t: &impl ReadableTable<(&'static str, i64), i64>,
    charger: &str,
) -> Result<Vec<(i64, i64)>, TableError> {
    let mut out = Vec::new();
    for row in t.range((charger, i64::MIN)..=(charger, i64::MAX))? {
        let (k, v) = row?;
        out.push((k.value().1, v.value()));
    }
    Ok(out)
}

/// Whether a charger message belongs in the outbox (1.6's three
/// transaction messages, 2.0.1's TransactionEvent). Only a MeterValues
/// payload is read, and only for whether it names a transaction.
pub fn is_transaction_message(action: &Action, payload: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Tx {
        #[serde(rename = "transactionId", default)]
        transaction_id: Option<serde::de::IgnoredAny>,
    }
    action.is_transaction_message().unwrap_or_else(|| {
        serde_json::from_str::<Tx>(payload).is_ok_and(|t| t.transaction_id.is_some())
    })
}

/// Whether a queued entry goes to the cloud over a link speaking `proto`:
/// TransactionEvents over 2.0.1, 1.6's transaction messages over 1.6 (a
/// charger offering both may connect in either).
pub fn belongs_to(entry: &Entry, proto: crate::ocpp::Protocol) -> bool {
    (entry.action == Action::TransactionEvent) == (proto == crate::ocpp::Protocol::Ocpp201)
}

/// Rewrite the transaction id of an outgoing message through `map`
/// (local → cloud). Returns `None` when nothing needs to change, so the
/// original bytes go out untouched.
pub fn rewrite_up(
    action: &Action,
    payload: &str,
    map: impl Fn(i64) -> Option<i64>,
) -> Option<String> {
    if !matches!(action, Action::StopTransaction | Action::MeterValues) {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let local = v.get("transactionId")?.as_i64()?;
    let cloud = map(local)?;
    v["transactionId"] = cloud.into();
    Some(v.to_string())
}

/// A 2.0.1 TransactionEvent the gateway answered, as replayed to the
/// cloud: with `offline: true` (2.0.1 E04: the event happened while the
/// CSMS could not answer it). `None`: send the original bytes.
pub fn mark_offline(action: &Action, payload: &str) -> Option<String> {
    if *action != Action::TransactionEvent {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let obj = v.as_object_mut()?;
    if obj.get("offline") == Some(&serde_json::Value::Bool(true)) {
        return None;
    }
    obj.insert("offline".into(), true.into());
    Some(v.to_string())
}

/// Rewrite the cloud's transaction id in a call toward the charger
/// (RemoteStopTransaction, SetChargingProfile's TxProfile) through `map`
/// (cloud → local). `None`: send the original bytes.
pub fn rewrite_down(
    action: &Action,
    payload: &str,
    map: impl Fn(i64) -> Option<i64>,
) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let slot = match action {
        Action::RemoteStopTransaction => v.get_mut("transactionId")?,
        Action::SetChargingProfile => v.get_mut("csChargingProfiles")?.get_mut("transactionId")?,
        _ => return None,
    };
    let local = map(slot.as_i64()?)?;
    *slot = local.into();
    Some(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_entries_wait_for_a_session_in_their_protocol() {
        use crate::ocpp::Protocol::*;
        let entry = |action: Action| Entry {
            action,
            payload: "{}".into(),
            queued_ms: 0,
            attempts: 0,
            local_tx: None,
        };
        assert!(belongs_to(&entry(Action::TransactionEvent), Ocpp201));
        assert!(!belongs_to(&entry(Action::TransactionEvent), Ocpp16));
        assert!(belongs_to(&entry(Action::StopTransaction), Ocpp16));
        assert!(!belongs_to(&entry(Action::StartTransaction), Ocpp201));
    }

    #[test]
    fn replayed_201_transaction_events_are_marked_offline() {
        let ev = r#"{"eventType":"Updated","seqNo":3,"transactionInfo":{"transactionId":"t"}}"#;
        let out: serde_json::Value =
            serde_json::from_str(&mark_offline(&Action::TransactionEvent, ev).unwrap()).unwrap();
        assert_eq!(out["offline"], true);
        assert_eq!(out["seqNo"], 3, "the rest as the charger sent it");
        let already = r#"{"offline":true,"seqNo":3}"#;
        assert_eq!(mark_offline(&Action::TransactionEvent, already), None);
        assert_eq!(mark_offline(&Action::StopTransaction, ev), None);
        assert!(is_transaction_message(&Action::TransactionEvent, ev));
    }

    #[test]
    fn transaction_messages_are_recognised() {
        assert!(is_transaction_message(&Action::StartTransaction, "{}"));
        assert!(is_transaction_message(
            &Action::MeterValues,
            r#"{"connectorId":1,"transactionId":-3,"meterValue":[]}"#
        ));
        assert!(!is_transaction_message(
            &Action::MeterValues,
            r#"{"connectorId":1,"meterValue":[]}"#
        ));
        assert!(!is_transaction_message(&Action::Heartbeat, "{}"));
    }

    #[test]
    fn ids_are_rewritten_both_ways_and_only_when_mapped() {
        let up = |l: i64| (l == -1).then_some(4242);
        let out = rewrite_up(
            &Action::StopTransaction,
            r#"{"transactionId":-1,"meterStop":5,"timestamp":"t"}"#,
            up,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["transactionId"].as_i64(), v["meterStop"].as_i64()),
            (Some(4242), Some(5))
        );
        assert!(rewrite_up(&Action::StopTransaction, r#"{"transactionId":7}"#, up).is_none());
        assert!(rewrite_up(&Action::StartTransaction, r#"{"transactionId":-1}"#, up).is_none());

        let down = |c: i64| (c == 4242).then_some(-1);
        let out = rewrite_down(
            &Action::RemoteStopTransaction,
            r#"{"transactionId":4242}"#,
            down,
        )
        .unwrap();
        assert_eq!(out, r#"{"transactionId":-1}"#);
        let p = r#"{"connectorId":1,"csChargingProfiles":{"chargingProfileId":1,"transactionId":4242,"stackLevel":0}}"#;
        let out: serde_json::Value =
            serde_json::from_str(&rewrite_down(&Action::SetChargingProfile, p, down).unwrap())
                .unwrap();
        assert_eq!(out["csChargingProfiles"]["transactionId"], -1);
        assert!(rewrite_down(
            &Action::RemoteStopTransaction,
            r#"{"transactionId":99}"#,
            down
        )
        .is_none());
        assert!(rewrite_down(&Action::Reset, r#"{"type":"Soft"}"#, down).is_none());
    }
}
