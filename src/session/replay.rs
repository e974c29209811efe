//! The session's side of the outbox: transaction messages enter the
//! outbox, go to the cloud one at a time in arrival order (directly under
//! the charger's message id when the queue is empty and the link is up,
//! else replayed later under the gateway's own ids), and leave only when
//! the cloud has answered. An entry is written to disk when the gateway
//! vouches for it (answers the charger itself), before that answer; one
//! relayed directly stays in memory, since the charger holds it until the
//! cloud's answer reaches it. Local transaction ids are mapped to the
//! cloud's in both directions (1.6; a 2.0.1 charger names its own
//! transactions, and its replayed TransactionEvents say `offline: true`).

use serde_json::value::RawValue;
use serde_json::Value;

use super::inout::{Action, InFlight, Queue, Queued, Then};
use super::state::SessionState;
use crate::event::{self, Event, Source};
use crate::journal::{JournalError, Op};
use crate::ocpp::{frame, Action as OcppAction, Protocol};
use crate::outbox::{self, Entry};

impl<S> SessionState<S> {
    /// Whether transaction messages go through the outbox: when there is a
    /// cloud to deliver them to and the gateway answers for the charger
    /// when it must (1.6; 2.0.1 in offline mode `hold`).
    pub(super) fn uses_outbox(&self) -> bool {
        self.cloud_url.is_some() && self.answers_itself()
    }

    /// The outbox operation for a locally answered message.
    pub(super) fn queue_op(
        &self,
        queue: Queue,
        action: &str,
        payload: &RawValue,
        local_tx: Option<i64>,
    ) -> Option<outbox::Op> {
        let charger = self.id.clone();
        match queue {
            Queue::No => None,
            Queue::Push => Some(outbox::Op::Push {
                charger,
                key: self.env.next_outbox_key(),
                entry: Entry {
                    action: action.into(),
                    payload: payload.get().into(),
                    queued_ms: self.now_ms(),
                    attempts: 0,
                    local_tx,
                },
            }),
            Queue::Update(key) => {
                let (_, old) = self.outbox.iter().find(|(k, _)| *k == key)?;
                let entry = Entry {
                    local_tx: local_tx.or(old.local_tx),
                    ..old.clone()
                };
                // The gateway now vouches for an entry it held in memory
                // only: it is stored for the first time.
                Some(if self.unstored == Some(key) {
                    outbox::Op::Push {
                        charger,
                        key,
                        entry,
                    }
                } else {
                    outbox::Op::Update {
                        charger,
                        key,
                        entry,
                    }
                })
            }
        }
    }

    /// Mirror a committed outbox operation in memory.
    pub(super) fn queued(&mut self, op: Option<outbox::Op>) {
        let (key, entry) = match op {
            Some(outbox::Op::Push { key, entry, .. } | outbox::Op::Update { key, entry, .. }) => {
                (key, entry)
            }
            _ => return,
        };
        if self.unstored == Some(key) {
            self.unstored = None;
        }
        match self.outbox.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = entry,
            None => self.outbox.push_back((key, entry)),
        }
    }

    /// A local answer's commit failed: an entry held in memory only is
    /// dropped (the charger got an error and keeps the message itself).
    pub(super) fn not_queued(&mut self, op: Option<outbox::Op>) {
        if let Some(outbox::Op::Push { key, .. }) = op {
            if self.unstored == Some(key) {
                self.unstored = None;
                self.outbox.retain(|(k, _)| *k != key);
            }
        }
    }

    /// A transaction message from the charger. Online with nothing queued,
    /// it is relayed at once under the charger's own id and kept in memory
    /// only: until the cloud's answer reaches it, the charger holds the
    /// message and retries it (OCPP 1.6 §3.7), so the gateway stores it
    /// only if it has to answer it itself.
    pub(super) fn on_transaction_call(
        &mut self,
        id: String,
        action: OcppAction,
        payload: Box<RawValue>,
    ) {
        let direct = self.cloud_up() && self.outbox.is_empty() && !self.upstream_busy();
        if !direct {
            return self.answer_locally(&id, &action, &payload, Queue::Push);
        }
        if event::journal_on_request(&action) {
            if let Some(ev) = self.received_event(&action, &payload, None, Source::Charger) {
                self.journal(ev);
            }
        }
        let key = self.env.next_outbox_key();
        let entry = Entry {
            action,
            payload: payload.get().into(),
            queued_ms: self.now_ms(),
            attempts: 0,
            local_tx: None,
        };
        self.outbox.push_back((key, entry));
        self.unstored = Some(key);
        self.send_entry(key, Some(id));
    }

    /// Queue a message the gateway writes on the charger's behalf.
    pub(super) fn enqueue(
        &mut self,
        action: OcppAction,
        payload: Value,
        event: Event,
        reply: tokio::sync::oneshot::Sender<bool>,
    ) {
        let mut ops = vec![Op::Event {
            charger: Some(self.id.clone()),
            event,
        }];
        let entry = Entry {
            action,
            payload: payload.to_string(),
            queued_ms: self.now_ms(),
            attempts: 0,
            local_tx: None,
        };
        let queued = self.uses_outbox().then(|| outbox::Op::Push {
            charger: self.id.clone(),
            key: self.env.next_outbox_key(),
            entry,
        });
        if let Some(op) = &queued {
            ops.push(Op::Outbox(op.clone()));
        }
        let then = Then::Enqueue { queued, reply };
        self.out.push(Action::Commit { ops, then });
    }

    pub(super) fn on_enqueued(
        &mut self,
        queued: Option<outbox::Op>,
        reply: tokio::sync::oneshot::Sender<bool>,
        res: Result<Vec<u64>, JournalError>,
    ) {
        match res {
            Ok(_) => {
                self.queued(queued);
                self.out.push(Action::Stored(reply, true));
                self.pump_outbox();
            }
            Err(e) => {
                log::error!(charger_id = self.id.as_str(); "cannot queue a message of the gateway's: {e}");
                self.out.push(Action::Stored(reply, false));
            }
        }
    }

    /// Send one outbox entry to the cloud; `charger_id` when the charger
    /// waits for the answer under that id.
    fn send_entry(&mut self, key: u64, charger_id: Option<String>) {
        let Some((_, entry)) = self.outbox.iter().find(|(k, _)| *k == key).cloned() else {
            return;
        };
        // Ids are rewritten only once the gateway has handed out its own.
        let rewritten = (!self.to_cloud.is_empty())
            .then(|| {
                outbox::rewrite_up(&entry.action, &entry.payload, |l| {
                    self.to_cloud.get(&l).copied()
                })
            })
            .flatten();
        let payload = rewritten.unwrap_or(entry.payload.clone());
        let payload = self.mark_deauthorized(&entry, payload);
        let direct = charger_id.is_some();
        // 2.0.1: a TransactionEvent the gateway answered reaches the cloud
        // marked as one that happened while it was offline.
        let payload = match direct {
            false => outbox::mark_offline(&entry.action, &payload).unwrap_or(payload),
            true => payload,
        };
        let msg_id = charger_id.unwrap_or_else(|| format!("cg-r{key}-{}", fastrand::u32(..)));
        let text = frame::call_raw(&msg_id, &entry.action, &payload);
        self.in_flight = Some(InFlight {
            msg_id,
            key,
            sent: self.now.mono,
            direct,
        });
        self.send_cloud(text);
    }

    /// The StopTransaction of a transaction the gateway stopped because the
    /// cloud refused its id tag carries reason DeAuthorized.
    fn mark_deauthorized(&self, entry: &Entry, payload: String) -> String {
        if entry.action != OcppAction::StopTransaction || self.deauthorized.is_empty() {
            return payload;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&entry.payload) else {
            return payload;
        };
        if !v["transactionId"]
            .as_i64()
            .is_some_and(|t| self.deauthorized.contains(&t))
        {
            return payload;
        }
        let Ok(mut out) = serde_json::from_str::<Value>(&payload) else {
            return payload;
        };
        v["reason"] = "DeAuthorized".into();
        out["reason"] = v["reason"].clone();
        out.to_string()
    }

    /// Send the next queued entry when the cloud link is free: a boot the
    /// cloud missed first, then the outbox in order, then the latest
    /// statuses.
    pub(super) fn pump_outbox(&mut self) {
        if self.outbox.is_empty() && self.resync.is_idle() {
            return;
        }
        if self.pump_resync(true) {
            return;
        }
        loop {
            let free = self.cloud_up() && !self.upstream_busy();
            if !free || self.outbox_retry_at.is_some_and(|t| t > self.now.mono) {
                return;
            }
            let Some((key, entry)) = self.outbox.front().cloned() else {
                // Outbox delivered: now the latest statuses.
                self.pump_resync(false);
                return;
            };
            let local = serde_json::from_str::<Value>(&entry.payload)
                .ok()
                .and_then(|v| v["transactionId"].as_i64())
                .filter(|t| *t < 0);
            if entry.action != OcppAction::StartTransaction
                && local.is_some_and(|l| !self.to_cloud.contains_key(&l))
            {
                // Its StartTransaction never reached the cloud (dead letter):
                // there is no cloud transaction to send this to.
                self.kill(
                    key,
                    &entry,
                    "its StartTransaction was not accepted by the cloud (no cloud transaction id)"
                        .into(),
                );
                continue;
            }
            return self.send_entry(key, None);
        }
    }

    /// The cloud answered the entry in flight.
    pub(super) fn on_outbox_result(&mut self, text: &str, payload: &RawValue) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let Some(pos) = self.outbox.iter().position(|(k, _)| *k == f.key) else {
            return;
        };
        let (key, entry) = self.outbox.remove(pos).expect("position is valid");
        self.outbox_retry_at = None;
        let mut ops = Vec::new();
        if self.unstored == Some(key) {
            self.unstored = None;
        } else {
            ops.push(Op::Outbox(outbox::Op::Remove {
                charger: self.id.clone(),
                key,
            }));
        }
        if let Some(op) = crate::auth::cache_update(&entry.action, &entry.payload, payload.get()) {
            ops.push(Op::Auth(op));
        }
        let cloud_tx = serde_json::from_str::<Value>(payload.get())
            .ok()
            .and_then(|v| v["transactionId"].as_i64());
        if let (Some(local), Some(cloud)) = (entry.local_tx, cloud_tx) {
            ops.push(Op::Outbox(outbox::Op::MapTx {
                charger: self.id.clone(),
                local,
                cloud,
            }));
            self.to_cloud.insert(local, cloud);
            self.to_local.insert(cloud, local);
        }
        let status = crate::ocpp::messages::AnswerFields::read(payload).status();
        let evs = self.delivered_events(&entry, f.direct, payload, cloud_tx, status.clone());
        for event in evs {
            ops.push(Op::Event {
                charger: Some(self.id.clone()),
                event,
            });
        }
        if f.direct {
            // The cloud vouched, and its answer goes to the charger: the
            // history is written with the next group commit.
            self.out.push(Action::Submit(ops));
            self.send_charger(text.to_string());
            return self.pump_outbox();
        }
        // A replayed entry is the gateway speaking for the charger: its
        // removal and id mapping are on disk before the next entry goes,
        // so a crash repeats at most the one message in flight.
        self.out.push(Action::Commit {
            ops,
            then: Then::Replayed,
        });
        match (&entry.action, status) {
            (OcppAction::StartTransaction, Some(s)) if s != "Accepted" => {
                if let Some(local) = entry.local_tx {
                    self.deauthorize(local, &s);
                }
            }
            (OcppAction::TransactionEvent, Some(s)) if s != "Accepted" => {
                self.deauthorize_201(&entry.payload, &s)
            }
            _ => {}
        }
    }

    /// 2.0.1: the cloud answered a replayed TransactionEvent's idToken with
    /// something other than Accepted. If its transaction still runs, the
    /// gateway stops it as a CSMS would (RequestStopTransaction), under
    /// `stop_transaction_on_invalid_id`.
    fn deauthorize_201(&mut self, payload: &str, status: &str) {
        let Ok(v) = serde_json::from_str::<Value>(payload) else {
            return;
        };
        let Some(tx) = v["transactionInfo"]["transactionId"].as_str() else {
            return;
        };
        if !self.cfg.offline.stop_on_invalid_id || !self.tx_evses.running(tx) {
            return;
        }
        log::warn!(charger_id = self.id.as_str(); "{}: the cloud answered {status} for offline transaction {tx}: stopping it", self.id);
        let (reply, _) = tokio::sync::oneshot::channel();
        self.queue_down.push_back(Queued::Local {
            action: OcppAction::RequestStopTransaction,
            payload: serde_json::json!({ "transactionId": tx }),
            source: Source::Gateway,
            part_of: None,
            reply,
        });
        self.pump_down()
    }

    /// What to journal for an outbox entry the cloud answered: the
    /// charger's call with the cloud's answer when it went directly, else
    /// that it was replayed.
    fn delivered_events(
        &mut self,
        entry: &Entry,
        direct: bool,
        payload: &RawValue,
        cloud_tx: Option<i64>,
        status: Option<String>,
    ) -> Vec<Event> {
        if direct {
            let journaled =
                self.proto == Protocol::Ocpp16 && event::journal_on_request(&entry.action);
            match RawValue::from_string(entry.payload.clone()) {
                Ok(p) if !journaled => {
                    self.events_for(&entry.action, &p, Some(payload), Source::Cloud)
                }
                _ => Vec::new(),
            }
        } else {
            vec![Event::Replayed {
                action: entry.action.to_string(),
                queued_ms: entry.queued_ms,
                local_transaction_id: entry.local_tx,
                cloud_transaction_id: cloud_tx,
                status,
            }]
        }
    }

    /// The cloud did not accept the id tag of a transaction the gateway let
    /// start offline. OCPP 1.6 StopTransactionOnInvalidId: if it is still
    /// running, the gateway stops it, and its StopTransaction goes to the
    /// cloud with reason DeAuthorized.
    fn deauthorize(&mut self, local: i64, status: &str) {
        if !self.cfg.offline.stop_on_invalid_id || !self.env.transaction_running(&self.id, local) {
            return;
        }
        log::warn!(charger_id = self.id.as_str(); "{}: the cloud answered {status} for offline transaction {local}: stopping it", self.id);
        self.deauthorized.insert(local);
        // Nobody waits for this answer: the receiver is dropped.
        let (reply, _) = tokio::sync::oneshot::channel();
        self.queue_down.push_back(Queued::Local {
            action: OcppAction::RemoteStopTransaction,
            payload: serde_json::json!({ "transactionId": local }),
            source: Source::Gateway,
            part_of: None,
            reply,
        });
        self.pump_down()
    }

    /// The cloud refused the entry in flight with a CALLERROR.
    pub(super) fn on_outbox_error(&mut self, text: &str, code: &str, description: &str) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let Some((key, entry)) = self.outbox.iter().find(|(k, _)| *k == f.key).cloned() else {
            return;
        };
        let error = format!("{code}: {description}");
        if f.direct {
            // The charger asked; it gets the cloud's answer and owns the retry.
            self.outbox.retain(|(k, _)| *k != key);
            if self.unstored == Some(key) {
                self.unstored = None;
            } else {
                let ops = vec![Op::Outbox(outbox::Op::Remove {
                    charger: self.id.clone(),
                    key,
                })];
                self.out.push(Action::Commit {
                    ops,
                    then: Then::Log("remove a refused outbox entry"),
                });
            }
            self.send_charger(text.to_string());
            self.protocol_error(
                crate::event::Link::Cloud,
                code,
                &format!("cloud rejected {}: {description}", entry.action),
                "",
            );
            return self.pump_outbox();
        }
        let attempts = entry.attempts + 1;
        if attempts >= self.cfg.offline.tx_attempts {
            self.kill(key, &Entry { attempts, ..entry }, error);
        } else {
            let updated = Entry {
                attempts,
                ..entry.clone()
            };
            let update = outbox::Op::Update {
                charger: self.id.clone(),
                key,
                entry: updated,
            };
            let ops = vec![
                Op::Outbox(update.clone()),
                Op::Event {
                    charger: Some(self.id.clone()),
                    event: Event::ReplayRetry {
                        action: entry.action.to_string(),
                        attempt: attempts,
                        error,
                    },
                },
            ];
            self.out.push(Action::Commit {
                ops,
                then: Then::Log("count a replay attempt"),
            });
            self.queued(Some(update));
            // OCPP 1.6 TransactionMessageRetryInterval: interval × attempts so far.
            self.outbox_retry_at =
                Some(self.now.mono + self.cfg.offline.tx_retry_interval * attempts);
        }
        self.pump_outbox()
    }

    /// Move an entry to the dead letters.
    fn kill(&mut self, key: u64, entry: &Entry, error: String) {
        self.outbox.retain(|(k, _)| *k != key);
        self.outbox_retry_at = None;
        log::warn!(charger_id = self.id.as_str(); "{}: {} moved to dead letters: {error}", self.id, entry.action);
        let ev = Event::DeadLetter {
            action: entry.action.to_string(),
            queued_ms: entry.queued_ms,
            error: error.clone(),
        };
        let ops = vec![
            Op::Outbox(outbox::Op::Kill {
                charger: self.id.clone(),
                key,
                entry: entry.clone(),
                error,
            }),
            Op::Event {
                charger: Some(self.id.clone()),
                event: ev,
            },
        ];
        self.out.push(Action::Commit {
            ops,
            then: Then::Log("move an outbox entry to dead letters"),
        });
    }

    /// The entry in flight will get no answer (link down or timeout): if
    /// the charger waits for it, answer it locally; the entry stays queued
    /// and is sent again later.
    pub(super) fn abandon_in_flight(&mut self) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        if !f.direct {
            return;
        }
        let Some((_, entry)) = self.outbox.iter().find(|(k, _)| *k == f.key).cloned() else {
            return;
        };
        let Ok(payload) = RawValue::from_string(entry.payload.clone()) else {
            return;
        };
        self.answer_locally(&f.msg_id, &entry.action, &payload, Queue::Update(f.key))
    }

    /// Rewrite the cloud's transaction id to the local one in calls toward
    /// the charger. `None`: relay the original text.
    pub(super) fn rewrite_for_charger(
        &self,
        id: &str,
        action: &OcppAction,
        request: &Value,
    ) -> Option<String> {
        if self.to_local.is_empty() {
            return None;
        }
        let payload = outbox::rewrite_down(action, &request.to_string(), |c| {
            self.to_local.get(&c).copied()
        })?;
        Some(frame::call_raw(id, action, &payload))
    }
}
