//! The gateway answering a charger itself (standalone, cloud away or
//! silent), in the charger's protocol: the answer, the events it
//! acknowledges and the outbox entry it vouches for go to disk first, and
//! what follows a commit (the reply, the resync notes) happens here too.

use serde_json::value::RawValue;
use serde_json::Value;

use super::inout::{Action, End, Queue, Then};
use super::state::SessionState;
use crate::event::{Event, Link, Source};
use crate::journal::{JournalError, Op};
use crate::ocpp::frame;
use crate::ocpp::{local, Action as OcppAction, Protocol};

impl<S> SessionState<S> {
    /// The gateway answers a charger's CALL itself, after the event that
    /// the answer acknowledges is on disk.
    pub(super) fn answer_locally(
        &mut self,
        id: &str,
        action: &OcppAction,
        payload: &RawValue,
        queue: Queue,
    ) {
        if !self.answers_itself() {
            let reply = frame::call_error(
                id,
                "InternalError",
                "cloud unreachable; ocpp2.0.1 is relayed only (offline mode disconnect)",
            );
            return self.send_charger(reply);
        }
        if let (Queue::Push, Some(why)) = (queue, self.queue_full()) {
            // The gateway would vouch for one more than it may keep: the
            // charger keeps it and retries (nothing queued is dropped).
            self.protocol_error(Link::Charger, "InternalError", &why, payload.get());
            let reply = frame::call_error(id, "InternalError", "gateway queue full; retry later");
            return self.send_charger(reply);
        }
        match self.local_answer(action, payload) {
            Ok(ans) => {
                let raw = RawValue::from_string(ans.to_string())
                    .expect("serde_json output is valid JSON");
                let mut ops: Vec<Op> = self
                    .local_events(action, payload, &raw)
                    .into_iter()
                    .map(|event| Op::Event {
                        charger: Some(self.id.clone()),
                        event,
                    })
                    .collect();
                let local_tx = if *action == OcppAction::StartTransaction {
                    ans["transactionId"].as_i64()
                } else {
                    None
                };
                let queued = self.queue_op(queue, action, payload, local_tx);
                if let Some(op) = &queued {
                    ops.push(Op::Outbox(op.clone()));
                }
                let then = Then::LocalAnswer {
                    id: id.to_string(),
                    action: action.clone(),
                    payload: payload.get().to_string(),
                    reply: frame::call_result(id, &ans),
                    queued,
                };
                self.out.push(Action::Commit { ops, then });
            }
            Err(le) => {
                self.protocol_error(
                    Link::Charger,
                    le.code,
                    &format!("{action}: {}", le.description),
                    payload.get(),
                );
                self.send_charger(frame::call_error(id, le.code, &le.description));
            }
        }
    }

    /// Why the outbox cannot take one more message, if it cannot.
    fn queue_full(&self) -> Option<String> {
        if self.outbox.len() >= self.cfg.offline.max_queued {
            return Some(format!(
                "{} transaction messages already queued for the cloud (offline.max_queued_messages)",
                self.outbox.len()
            ));
        }
        self.env.outbox_full().then(|| {
            "the queue for the cloud, all chargers together, holds half of journal.max_size_mb"
                .to_string()
        })
    }

    /// The local controller's answer, in the charger's protocol.
    fn local_answer(&self, action: &str, payload: &RawValue) -> Result<Value, local::LocalError> {
        let now = self.now_rfc3339();
        let (env, charger, wall) = (&self.env, &self.id, self.now.wall);
        let known = |tag: &str| env.tag_status(charger, tag, wall);
        match self.proto {
            Protocol::Ocpp16 => local::answer(
                action,
                payload,
                &now,
                &self.cfg.offline.policy,
                &known,
                &mut || env.next_local_tx_id(),
            ),
            Protocol::Ocpp201 => {
                local::answer_201(action, payload, &now, &self.cfg.offline.policy, &known)
            }
        }
    }

    /// What to journal for a call the gateway answered with `answer`.
    fn local_events(&mut self, action: &str, payload: &RawValue, answer: &RawValue) -> Vec<Event> {
        match self.proto {
            Protocol::Ocpp16 => self
                .received_event(action, payload, Some(answer), Source::Gateway)
                .into_iter()
                .collect(),
            Protocol::Ocpp201 => self.events_for(action, payload, Some(answer), Source::Gateway),
        }
    }

    pub(super) fn on_committed(
        &mut self,
        then: Then,
        res: Result<Vec<u64>, JournalError>,
    ) -> Result<(), End> {
        match then {
            Then::Log(what) => {
                if let Err(e) = res {
                    log::warn!(charger_id = self.id.as_str(); "cannot {what}: {e}");
                }
            }
            Then::LocalAnswer {
                id,
                action,
                payload,
                reply,
                queued,
            } => match res {
                Ok(_) => {
                    self.queued(queued);
                    self.note_missed(&action, &payload);
                    self.send_charger(reply);
                }
                Err(e) => {
                    self.not_queued(queued);
                    // Never acknowledge what is not stored: the charger keeps
                    // the message and retries.
                    log::error!(charger_id = self.id.as_str(); "cannot store {action}: {e}");
                    let reply = frame::call_error(
                        &id,
                        "InternalError",
                        "gateway storage unavailable; retry later",
                    );
                    self.send_charger(reply);
                }
            },
            Then::Replayed => {
                if let Err(e) = res {
                    log::warn!(charger_id = self.id.as_str(); "cannot store a replayed entry's removal: {e}");
                }
                self.pump_outbox();
            }
            Then::Enqueue { queued, reply } => self.on_enqueued(queued, reply, res),
        }
        Ok(())
    }
}
