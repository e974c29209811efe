//! From a charger's call and its answer to the events the journal keeps,
//! in the operator's vocabulary: OCPP 1.6 read as it is, 2.0.1's
//! TransactionEvent and StatusNotification mapped onto the same events.

use serde_json::value::RawValue;

use super::{excerpt, Event, Source, FIELD_MAX};
use crate::ocpp::messages::{self, decode, AnswerFields};

/// The event to journal for a charger's CALL, given its answer (`None`
/// when the call was journaled before being answered). Returns `None` for
/// calls that are not journaled (Heartbeat) or whose payload is unreadable
/// (the protocol error path journals those).
pub fn for_charger_call(
    action: &str,
    payload: &RawValue,
    answer: Option<&RawValue>,
    answered_by: Source,
) -> Option<Event> {
    for_charger_call_at(action, payload, answer, answered_by, None)
}

/// [`for_charger_call`] for a call received at `now`: a MeterValues event
/// also says how far the charger's clock is off (`clock_skew_s`).
pub fn for_charger_call_at(
    action: &str,
    payload: &RawValue,
    answer: Option<&RawValue>,
    answered_by: Source,
    now: Option<jiff::Timestamp>,
) -> Option<Event> {
    if action == "Heartbeat" {
        return None; // the most frequent message: not even its answer is read
    }
    let fields = answer.map(AnswerFields::read).unwrap_or_default();
    if matches!(
        action,
        "StartTransaction" | "StopTransaction" | "MeterValues"
    ) {
        return transaction_call(action, payload, &fields, answered_by, now);
    }
    Some(match action {
        "BootNotification" => {
            let b: messages::BootNotification = decode(payload).ok()?;
            Event::BootNotification {
                vendor: b.charge_point_vendor,
                model: b.charge_point_model,
                firmware: b.firmware_version,
                serial: b.charge_point_serial_number,
                status: fields.status(),
                answered_by,
            }
        }
        "StatusNotification" => {
            let s: messages::StatusNotification = decode(payload).ok()?;
            // OCPP 1.6 bounds these at 50 characters; a charger that sends
            // more must not make every record of it bigger.
            Event::StatusNotification {
                connector: s.connector_id,
                status: excerpt(&s.status, FIELD_MAX),
                error_code: excerpt(&s.error_code, FIELD_MAX),
                info: s.info.map(|i| excerpt(&i, FIELD_MAX)),
            }
        }
        "Authorize" => {
            let a: messages::Authorize = decode(payload).ok()?;
            Event::Authorize {
                id_tag: a.id_tag,
                status: fields.status(),
                answered_by,
            }
        }
        other => Event::ChargerCall {
            action: other.to_string(),
            status: fields.status(),
            answered_by,
        },
    })
}

/// A 1.6 transaction message (StartTransaction, StopTransaction,
/// MeterValues) as the journal reads it.
fn transaction_call(
    action: &str,
    payload: &RawValue,
    fields: &AnswerFields,
    answered_by: Source,
    now: Option<jiff::Timestamp>,
) -> Option<Event> {
    Some(match action {
        "StartTransaction" => {
            let s: messages::StartTransaction = decode(payload).ok()?;
            Event::StartTransaction {
                connector: s.connector_id,
                id_tag: s.id_tag,
                meter_start: s.meter_start,
                transaction_id: fields.transaction_id,
                transaction_ref: None,
                status: fields.status(),
                timestamp: s.timestamp,
                answered_by,
            }
        }
        "StopTransaction" => {
            let s: messages::StopTransaction = decode(payload).ok()?;
            Event::StopTransaction {
                transaction_id: Some(s.transaction_id),
                transaction_ref: None,
                meter_stop: s.meter_stop,
                reason: s.reason,
                timestamp: s.timestamp,
                answered_by,
                forced: false,
            }
        }
        "MeterValues" => {
            let m: messages::MeterValues = decode(payload).ok()?;
            let s = m.summary();
            Event::MeterValues {
                connector: m.connector_id,
                transaction_id: m.transaction_id,
                transaction_ref: None,
                energy_wh: s.energy_wh,
                power_w: s.power_w,
                current_a: s.current_a,
                clock_skew_s: clock_skew(m.meter_value.iter().map(|v| v.timestamp.as_str()), now),
            }
        }
        _ => return None,
    })
}

/// What the journal remembers of each running OCPP 2.0.1 transaction:
/// its EVSE (only its first TransactionEvent has to say) and its latest
/// energy reading (its Ended event need not carry one). Bounded: a charger
/// has a few EVSEs.
#[derive(Debug, Default)]
pub struct TxEvses(Vec<TxSeen>);

#[derive(Debug)]
struct TxSeen {
    tx: String,
    evse: u32,
    energy_wh: Option<f64>,
}

impl TxEvses {
    const MAX: usize = 32;

    fn entry(&mut self, tx: &str) -> &mut TxSeen {
        match self.0.iter().position(|s| s.tx == tx) {
            Some(i) => &mut self.0[i],
            None => {
                if self.0.len() >= Self::MAX {
                    self.0.remove(0);
                }
                self.0.push(TxSeen {
                    tx: tx.to_string(),
                    evse: 0,
                    energy_wh: None,
                });
                self.0.last_mut().expect("just pushed")
            }
        }
    }

    /// Whether transaction `tx` has started and not ended, as far as the
    /// journal has seen.
    pub fn running(&self, tx: &str) -> bool {
        let tx = excerpt(tx, 36);
        self.0.iter().any(|s| s.tx == tx)
    }

    fn forget(&mut self, tx: &str) {
        self.0.retain(|s| s.tx != tx);
    }
}

/// The events to journal for an OCPP 2.0.1 charger's CALL, given its
/// answer, in the operator's vocabulary: a TransactionEvent is a
/// StartTransaction (Started), MeterValues (readings), a
/// StatusNotification when its charging state changes (Charging,
/// SuspendedEV, SuspendedEVSE, EVConnected, Idle) and a StopTransaction
/// (Ended); StatusNotification is the EVSE's connector status. EVSE ids
/// stand where 1.6 has connector ids.
pub fn for_charger_call_201(
    action: &str,
    payload: &RawValue,
    answer: Option<&RawValue>,
    answered_by: Source,
    evses: &mut TxEvses,
    now: Option<jiff::Timestamp>,
) -> Vec<Event> {
    use crate::ocpp::v201;
    if action == "Heartbeat" {
        return Vec::new();
    }
    let status = || answer.and_then(|a| AnswerFields::read(a).status());
    let other = || Event::ChargerCall {
        action: excerpt(action, FIELD_MAX),
        status: status(),
        answered_by,
    };
    let cut = |s: &str| excerpt(s, FIELD_MAX);
    match action {
        "BootNotification" => match decode::<v201::BootNotification>(payload) {
            Ok(b) => vec![Event::BootNotification {
                vendor: cut(&b.charging_station.vendor_name),
                model: cut(&b.charging_station.model),
                firmware: b.charging_station.firmware_version.as_deref().map(cut),
                serial: b.charging_station.serial_number.as_deref().map(cut),
                status: status(),
                answered_by,
            }],
            Err(_) => vec![other()],
        },
        "StatusNotification" => match decode::<v201::StatusNotification>(payload) {
            Ok(s) => vec![Event::StatusNotification {
                connector: s.evse_id,
                status: cut(&s.connector_status),
                error_code: "NoError".into(),
                info: (s.connector_id != 1).then(|| format!("connector {}", s.connector_id)),
            }],
            Err(_) => vec![other()],
        },
        "Authorize" => match decode::<v201::Authorize>(payload) {
            Ok(a) => vec![Event::Authorize {
                id_tag: cut(&a.id_token.id_token),
                status: status(),
                answered_by,
            }],
            Err(_) => vec![other()],
        },
        "MeterValues" => match decode::<v201::MeterValues>(payload) {
            Ok(m) => {
                let s = v201::summary(&m.meter_value);
                vec![Event::MeterValues {
                    connector: m.evse_id,
                    transaction_id: None,
                    transaction_ref: None,
                    energy_wh: s.energy_wh,
                    power_w: s.power_w,
                    current_a: s.current_a,
                    clock_skew_s: clock_skew(v201::stamps(&m.meter_value), now),
                }]
            }
            Err(_) => vec![other()],
        },
        "TransactionEvent" => match decode::<v201::TransactionEvent>(payload) {
            Ok(t) => transaction_event(t, status(), answered_by, evses, now),
            Err(_) => vec![other()],
        },
        _ => vec![other()],
    }
}

fn transaction_event(
    t: crate::ocpp::v201::TransactionEvent,
    status: Option<String>,
    answered_by: Source,
    evses: &mut TxEvses,
    now: Option<jiff::Timestamp>,
) -> Vec<Event> {
    let tx = excerpt(&t.transaction_info.transaction_id, 36);
    let meter = crate::ocpp::v201::summary(&t.meter_value);
    let seen = evses.entry(&tx);
    if let Some(e) = &t.evse {
        seen.evse = e.id;
    }
    seen.energy_wh = meter.energy_wh.or(seen.energy_wh);
    let (connector, last_wh) = (seen.evse, seen.energy_wh);
    let mut out = Vec::new();
    if t.event_type == "Started" {
        out.push(Event::StartTransaction {
            connector,
            id_tag: t
                .id_token
                .as_ref()
                .map_or_else(|| "-".into(), |i| excerpt(&i.id_token, FIELD_MAX)),
            meter_start: meter.energy_wh.map_or(0, |wh| wh.round() as i64),
            transaction_id: None,
            transaction_ref: Some(tx.clone()),
            status: status.clone(),
            timestamp: excerpt(&t.timestamp, FIELD_MAX),
            answered_by,
        });
    }
    if let Some(state) = &t.transaction_info.charging_state {
        out.push(Event::StatusNotification {
            connector,
            status: excerpt(state, FIELD_MAX),
            error_code: "NoError".into(),
            info: Some(excerpt(&t.trigger_reason, FIELD_MAX)),
        });
    }
    match t.event_type.as_str() {
        "Ended" => {
            evses.forget(&tx);
            out.push(Event::StopTransaction {
                transaction_id: None,
                transaction_ref: Some(tx),
                meter_stop: last_wh.map_or(0, |wh| wh.round() as i64),
                reason: t
                    .transaction_info
                    .stopped_reason
                    .as_deref()
                    .map(|r| excerpt(r, FIELD_MAX)),
                timestamp: excerpt(&t.timestamp, FIELD_MAX),
                answered_by,
                forced: false,
            });
        }
        "Updated" if meter != Default::default() => out.push(Event::MeterValues {
            connector,
            transaction_id: None,
            transaction_ref: Some(tx),
            energy_wh: meter.energy_wh,
            power_w: meter.power_w,
            current_a: meter.current_a,
            clock_skew_s: clock_skew(crate::ocpp::v201::stamps(&t.meter_value), now),
        }),
        _ => {}
    }
    if out.is_empty() {
        out.push(progress(&t, answered_by));
    }
    out
}

/// A TransactionEvent that starts, stops, meters and changes nothing the
/// log shows otherwise: what it was, and its seqNo.
fn progress(t: &crate::ocpp::v201::TransactionEvent, answered_by: Source) -> Event {
    Event::ChargerCall {
        action: "TransactionEvent".into(),
        status: Some(format!(
            "{} {} seqNo {}",
            excerpt(&t.event_type, FIELD_MAX),
            excerpt(&t.trigger_reason, FIELD_MAX),
            t.seq_no
        )),
        answered_by,
    }
}

/// How far the charger's clock is ahead of the gateway's (`now`, when the
/// message arrived), from its newest sample's timestamp.
fn clock_skew<'a>(
    stamps: impl Iterator<Item = &'a str>,
    now: Option<jiff::Timestamp>,
) -> Option<i64> {
    let now = now?;
    let newest = stamps
        .filter_map(|t| t.parse::<jiff::Timestamp>().ok())
        .max()?;
    Some(newest.as_second() - now.as_second())
}

/// Whether a charger CALL is journaled as soon as it arrives (its answer
/// carries nothing worth keeping) rather than when it is answered.
pub fn journal_on_request(action: &crate::ocpp::Action) -> bool {
    use crate::ocpp::Action;
    matches!(action, Action::StatusNotification | Action::MeterValues)
}
