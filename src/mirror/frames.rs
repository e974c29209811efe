//! What a mirror sends a link: answers to the charger's messages it was
//! fed (a 1.6 StartTransaction's answer names the mirror's transaction),
//! and its own calls, which reach the charger only when allowed.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::Link;
use crate::event::{Event, Source};
use crate::hub::CallOutcome;
use crate::ocpp::frame::{self, Frame};
use crate::ocpp::Protocol;

impl Link {
    /// A frame from the mirror; false when it could not be read.
    pub(super) fn on_frame(
        &mut self,
        text: &str,
        answers: &mpsc::Sender<String>,
        busy: &mut bool,
    ) -> bool {
        let Ok(f) = frame::parse(text) else {
            return false;
        };
        match f {
            Frame::CallResult { id, payload } => {
                self.on_result(&id, &payload);
                true
            }
            Frame::CallError { id, code, .. } => {
                if self.in_flight.as_ref().is_some_and(|(i, _, _)| *i == id) {
                    let (_, item, _) = self.in_flight.take().expect("checked");
                    log::info!(
                        "mirror {}: {}: {} refused: {code}",
                        self.cfg.name,
                        self.charger,
                        item.action
                    );
                    self.delivered(&item);
                }
                true
            }
            Frame::Call {
                id,
                action,
                payload,
            } => {
                self.on_call(id, action, &payload, answers, busy);
                true
            }
        }
    }

    /// The mirror answered: the entry in flight is delivered; a 1.6
    /// StartTransaction's answer gives the mirror's transaction id.
    fn on_result(&mut self, id: &str, payload: &serde_json::value::RawValue) {
        if self.in_flight.as_ref().is_none_or(|(i, _, _)| *i != id) {
            return;
        }
        let (_, item, _) = self.in_flight.take().expect("checked");
        if item.action == crate::ocpp::Action::StartTransaction && self.proto == Protocol::Ocpp16 {
            let tx = serde_json::from_str::<Value>(payload.get())
                .ok()
                .and_then(|v| v["transactionId"].as_i64());
            let connector = serde_json::from_str::<Value>(&item.payload)
                .ok()
                .and_then(|v| v["connectorId"].as_u64())
                .unwrap_or(0) as u32;
            if let Some(m) = tx {
                match self
                    .charger_started
                    .get_mut(&connector)
                    .and_then(VecDeque::pop_front)
                {
                    Some(c) => self.map(c, m),
                    None => self
                        .mirror_started
                        .entry(connector)
                        .or_default()
                        .push_back(m),
                }
            }
        }
        self.delivered(&item);
    }

    /// The mirror's own call to the charger: refused unless allowed, one
    /// at a time, answered when the charger answers.
    fn on_call(
        &mut self,
        id: String,
        action: crate::ocpp::Action,
        payload: &serde_json::value::RawValue,
        answers: &mpsc::Sender<String>,
        busy: &mut bool,
    ) {
        let request: Value = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
        let part_of = format!("mirror:{}", self.cfg.name);
        if !self.cfg.allow.iter().any(|a| action == a.as_str()) {
            self.journal(Event::RemoteAction {
                action: crate::event::excerpt(&action, crate::event::FIELD_MAX),
                source: Source::Mirror,
                request: crate::event::redact(&action, &request),
                result: None,
                error: Some("refused: not in this mirror's allow list".into()),
                part_of: Some(part_of),
            });
            let _ = answers.try_send(frame::call_error(
                &id,
                "SecurityError",
                &format!("{action} is not allowed for this backend (read-only mirror)"),
            ));
            return;
        }
        if *busy {
            let _ = answers.try_send(frame::call_error(&id, "GenericError", "one call at a time"));
            return;
        }
        *busy = true;
        let (registry, charger, answers) = (
            self.ctx.registry.clone(),
            self.charger.clone(),
            answers.clone(),
        );
        let wait = self.ctx.call_timeout + Duration::from_secs(5);
        tokio::spawn(async move {
            let out = registry
                .call_step(
                    &charger,
                    &action,
                    request,
                    Source::Mirror,
                    Some(&part_of),
                    wait,
                )
                .await;
            let text = match out {
                Some(CallOutcome::Result(v)) => frame::call_result(&id, &v),
                Some(CallOutcome::Error { code, description }) => {
                    frame::call_error(&id, &code, &description)
                }
                Some(o) => frame::call_error(&id, "GenericError", &o.brief()),
                None => frame::call_error(&id, "GenericError", "charger not connected"),
            };
            let _ = answers.send(text).await;
        });
    }
}
