//! The cloud side of the session's decisions: frames from the cloud (its
//! calls queued for the charger under the one-CALL rule, its answers to
//! relayed calls, replayed entries and resync messages), and the queue of
//! calls toward the charger.

use serde_json::value::RawValue;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::inout::{Action, CloudMsg, End, PendingDown, Queued};
use super::state::{SessionState, MAX_QUEUED_DOWN};
use crate::event::{self, Event, Link, Source};
use crate::ocpp::frame::{self, Frame};
use crate::ocpp::{Action as OcppAction, Protocol};

impl<S> SessionState<S> {
    pub(super) fn on_cloud_msg(&mut self, msg: CloudMsg) -> Result<(), End> {
        match msg {
            CloudMsg::Text(t) => {
                self.on_cloud_text(t);
                Ok(())
            }
            CloudMsg::Closed(f) => {
                let code = f.as_ref().map(|f| f.0);
                let why = f.map(|f| f.1).filter(|r| !r.is_empty());
                self.link_down(
                    why.unwrap_or_else(|| "cloud closed the connection".into()),
                    code,
                    true,
                )
            }
            CloudMsg::Binary => {
                self.protocol_error(
                    Link::Cloud,
                    "ProtocolError",
                    "binary frames are not OCPP-J",
                    "",
                );
                Ok(())
            }
            CloudMsg::Other => Ok(()),
            CloudMsg::Lost(e) => self.link_down(e, None, false),
        }
    }

    fn on_cloud_text(&mut self, raw: Utf8Bytes) {
        let text = raw.as_str();
        let Some(frame) = self.parse_frame(Link::Cloud, text) else {
            return;
        };
        match frame {
            Frame::Call {
                id,
                action,
                payload,
            } => self.on_cloud_call(text, id, action, &payload),
            Frame::CallResult { id, payload } => self.on_cloud_result(&raw, id, &payload),
            Frame::CallError {
                id,
                code,
                description,
            } => self.on_cloud_error(&raw, id, &code, &description),
        }
    }

    /// A call of the cloud's for the charger: queued for its turn.
    fn on_cloud_call(&mut self, text: &str, id: String, action: OcppAction, payload: &RawValue) {
        if self.queue_down.len() + self.pending_down.len() >= MAX_QUEUED_DOWN {
            // A cloud that sends faster than the charger answers must not
            // grow the gateway's memory without bound.
            let reply = frame::call_error(
                &id,
                "GenericError",
                "charger busy: too many calls waiting for it at the gateway",
            );
            return self.send_cloud(reply);
        }
        let request = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
        self.queue_down.push_back(Queued::Cloud {
            text: text.to_string(),
            id,
            action,
            request,
        });
        self.pump_down()
    }

    fn resync_in_flight(&self, id: &str) -> bool {
        self.resync
            .in_flight
            .as_ref()
            .is_some_and(|f| f.msg_id == id)
    }

    /// The cloud's answer: to a replayed entry, a resync message, or a
    /// call relayed for the charger (sent on as received).
    fn on_cloud_result(&mut self, raw: &Utf8Bytes, id: String, payload: &RawValue) {
        let text = raw.as_str();
        if self.in_flight.as_ref().is_some_and(|f| f.msg_id == id) {
            return self.on_outbox_result(text, payload);
        }
        if self.resync_in_flight(&id) {
            let status = crate::ocpp::messages::AnswerFields::read(payload).status();
            return self.on_resync_answer(status, None);
        }
        let Some(p) = self.pending_up.remove(&id) else {
            self.protocol_error(
                Link::Cloud,
                "ProtocolError",
                "answer to a call that is not outstanding (already answered by the gateway?)",
                text,
            );
            return;
        };
        self.out.push(Action::ToCharger(raw.clone()));
        self.note_delivered(&p.action, p.payload.get());
        self.remember_tags(&p.action, p.payload.get(), payload.get());
        if !(self.proto == Protocol::Ocpp16 && event::journal_on_request(&p.action)) {
            for ev in self.events_for(&p.action, &p.payload, Some(payload), Source::Cloud) {
                self.journal(ev);
            }
        }
        self.pump_outbox()
    }

    /// The cloud's CALLERROR, routed like its answers.
    fn on_cloud_error(&mut self, raw: &Utf8Bytes, id: String, code: &str, description: &str) {
        let text = raw.as_str();
        if self.in_flight.as_ref().is_some_and(|f| f.msg_id == id) {
            return self.on_outbox_error(text, code, description);
        }
        if self.resync_in_flight(&id) {
            return self.on_resync_answer(None, Some(format!("{code}: {description}")));
        }
        let Some(p) = self.pending_up.remove(&id) else {
            self.protocol_error(
                Link::Cloud,
                "ProtocolError",
                "error for a call that is not outstanding",
                text,
            );
            return;
        };
        self.out.push(Action::ToCharger(raw.clone()));
        self.protocol_error(
            Link::Cloud,
            code,
            &format!("cloud rejected {}: {description}", p.action),
            "",
        );
        self.pump_outbox()
    }

    /// What to journal for a charger's call and its answer, in the
    /// operator's vocabulary whichever protocol the charger speaks.
    pub(super) fn events_for(
        &mut self,
        action: &str,
        payload: &RawValue,
        answer: Option<&RawValue>,
        by: Source,
    ) -> Vec<Event> {
        match self.proto {
            Protocol::Ocpp16 => event::for_charger_call(action, payload, answer, by)
                .into_iter()
                .collect(),
            Protocol::Ocpp201 => event::for_charger_call_201(
                action,
                payload,
                answer,
                by,
                &mut self.tx_evses,
                Some(self.now.wall),
            ),
        }
    }

    /// Send the next call toward the charger when none is outstanding.
    /// Cloud calls are relayed even while another cloud call is out (the
    /// cloud's own business), but never while a gateway call is.
    pub(super) fn pump_down(&mut self) {
        while let Some(next) = self.queue_down.front() {
            let local_busy = self.pending_down.values().any(|p| p.reply.is_some());
            let ok = match next {
                Queued::Cloud { .. } => !local_busy,
                Queued::Local { .. } => self.pending_down.is_empty(),
            };
            if !ok {
                return;
            }
            let sent = self.now.mono;
            let (id, pending, text) = match self.queue_down.pop_front().expect("front exists") {
                Queued::Cloud {
                    text,
                    id,
                    action,
                    request,
                } => {
                    // The cloud names transactions the charger knows by a local id.
                    let text = self
                        .rewrite_for_charger(&id, &action, &request)
                        .unwrap_or(text);
                    let p = PendingDown {
                        action,
                        request,
                        source: Source::Cloud,
                        part_of: None,
                        reply: None,
                        sent,
                    };
                    (id, p, text)
                }
                Queued::Local {
                    action,
                    payload,
                    source,
                    part_of,
                    reply,
                } => {
                    self.local_ids += 1;
                    // 1.6: prefixed so they never collide with the cloud's
                    // ids. 2.0.1 asks for UUIDs (Part 4 §4.1.3: at most 36
                    // characters, unique), random enough not to collide.
                    let id = if self.proto == crate::ocpp::Protocol::Ocpp201 {
                        frame::uuid_v4()
                    } else {
                        format!("cg-{}-{}", self.local_ids, fastrand::u32(..))
                    };
                    let text = frame::call(&id, &action, &payload);
                    let p = PendingDown {
                        action,
                        request: payload,
                        source,
                        part_of,
                        reply: Some(reply),
                        sent,
                    };
                    (id, p, text)
                }
            };
            self.pending_down.insert(id, pending);
            self.send_charger(text);
        }
    }
}
