//! "Force stop charging": a stop that does not depend on the charger's
//! cooperation. RemoteStopTransaction first; if no StopTransaction follows
//! in time, escalate: ChangeAvailability Inoperative, UnlockConnector, Hard
//! Reset. If the charger still has not closed the transaction, the gateway
//! closes it itself, in the journal and toward the cloud (reason `Other`,
//! meter stop = last known reading, marked force-stopped: not billable).
//!
//! An OCPP 2.0.1 charger gets the same steps in 2.0.1 (RequestStopTransaction,
//! ChangeAvailability Inoperative on the EVSE, UnlockConnector, Reset
//! Immediate); if it still does not end the transaction, the gateway closes
//! it in the journal only: a 2.0.1 TransactionEvent is numbered (seqNo) by
//! the charger, so the gateway cannot end it toward the cloud for it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::event::{Event, Source};
use crate::hub::Command;
use crate::hub::Ctx;

/// One escalation step and how the charger answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub call: String,
    pub request: Value,
    pub outcome: String,
}

/// How a force stop went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The transaction: 1.6's number, or 2.0.1's string.
    pub transaction_id: Value,
    pub steps: Vec<Step>,
    /// The charger sent its StopTransaction.
    pub stopped_by_charger: bool,
    /// The gateway closed the transaction itself (force-stopped, not billable).
    pub closed_by_gateway: bool,
}

/// Why a force stop could not start.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no running transaction on connector {0}")]
    NoTransaction(u32),
}

/// Run the escalation for the transaction on `connector`, and journal it
/// as one `RemoteAction ForceStop` with its source, steps (each also
/// journaled on its own, marked `part_of: ForceStop`), what the charger
/// answered to each, and the outcome.
pub async fn run(
    ctx: &Ctx,
    charger: &str,
    connector: u32,
    source: Source,
    wait: Duration,
) -> Result<Report, Refusal> {
    let report = escalate(ctx, charger, connector, source, wait).await?;
    let outcome = if report.stopped_by_charger {
        "stopped by the charger"
    } else {
        "closed by the gateway (force-stopped, not billable)"
    };
    let mut result = serde_json::to_value(&report).unwrap_or(Value::Null);
    result["status"] = outcome.into();
    let ev = Event::RemoteAction {
        action: "ForceStop".into(),
        source,
        request: json!({"connector": connector, "transaction": report.transaction_id}),
        result: Some(result),
        error: None,
        part_of: None,
    };
    ctx.journal.record(Some(charger), ev).await;
    Ok(report)
}

async fn escalate(
    ctx: &Ctx,
    charger: &str,
    connector: u32,
    source: Source,
    wait: Duration,
) -> Result<Report, Refusal> {
    let state = ctx.journal.state();
    let c = state.chargers.get(charger);
    let tx = c
        .and_then(|c| c.transactions.get(&connector))
        .cloned()
        .ok_or(Refusal::NoTransaction(connector))?;
    let key = match (tx.transaction_id, &tx.transaction_ref) {
        (Some(id), _) => TxKey::V16(id),
        (None, Some(r)) => TxKey::V201(r.clone()),
        (None, None) => return Err(Refusal::NoTransaction(connector)),
    };
    let mut stream = ctx.journal.subscribe();
    let mut report = Report {
        transaction_id: match &key {
            TxKey::V16(id) => json!(id),
            TxKey::V201(r) => json!(r),
        },
        steps: Vec::new(),
        stopped_by_charger: false,
        closed_by_gateway: false,
    };
    for (call, request) in steps(&key, connector) {
        let outcome = match ctx
            .registry
            .call_step(
                charger,
                call,
                request.clone(),
                source,
                Some("ForceStop"),
                wait * 2,
            )
            .await
        {
            Some(o) => o.brief(),
            None => "charger offline".into(),
        };
        report.steps.push(Step {
            call: call.into(),
            request,
            outcome,
        });
        if stopped(&mut stream, charger, &key, wait).await {
            report.stopped_by_charger = true;
            return Ok(report);
        }
    }
    let still_running = ctx
        .journal
        .state()
        .chargers
        .get(charger)
        .is_some_and(|c| c.transactions.values().any(|t| key.is(t)));
    if !still_running {
        report.stopped_by_charger = true;
        return Ok(report);
    }
    // The charger never closed it: the gateway does.
    let meter_stop = c
        .and_then(|c| c.meter.energy_wh)
        .map(|wh| wh as i64)
        .unwrap_or(tx.meter_start);
    let timestamp = crate::clock::now_rfc3339();
    match key {
        TxKey::V16(id) => close_16(ctx, charger, id, meter_stop, timestamp).await,
        TxKey::V201(r) => close_201(ctx, charger, &r, meter_stop, timestamp).await,
    }
    report.closed_by_gateway = true;
    Ok(report)
}

/// The escalation's four calls, in the charger's protocol.
fn steps(key: &TxKey, connector: u32) -> [(&'static str, Value); 4] {
    match &key {
        TxKey::V16(tx_id) => [
            ("RemoteStopTransaction", json!({"transactionId": tx_id})),
            (
                "ChangeAvailability",
                json!({"connectorId": connector, "type": "Inoperative"}),
            ),
            ("UnlockConnector", json!({"connectorId": connector})),
            ("Reset", json!({"type": "Hard"})),
        ],
        TxKey::V201(r) => [
            ("RequestStopTransaction", json!({"transactionId": r})),
            (
                "ChangeAvailability",
                json!({"operationalStatus": "Inoperative", "evse": {"id": connector}}),
            ),
            (
                "UnlockConnector",
                json!({"evseId": connector, "connectorId": 1}),
            ),
            ("Reset", json!({"type": "Immediate"})),
        ],
    }
}

/// Close a 1.6 transaction the charger never closed: journaled, and its
/// StopTransaction queued for the cloud (by the session, or directly when
/// the charger is gone).
async fn close_16(ctx: &Ctx, charger: &str, tx_id: i64, meter_stop: i64, timestamp: String) {
    let payload = json!({"transactionId": tx_id, "meterStop": meter_stop, "timestamp": timestamp, "reason": "Other"});
    let ev = Event::StopTransaction {
        transaction_id: Some(tx_id),
        transaction_ref: None,
        meter_stop,
        reason: Some("Other".into()),
        timestamp,
        answered_by: Source::Gateway,
        forced: true,
    };
    let queued = match ctx.registry.get(charger) {
        Some(cmd) => {
            let (reply, rx) = oneshot::channel();
            let _ = cmd
                .send(Box::new(Command::Enqueue {
                    action: "StopTransaction".into(),
                    payload: payload.clone(),
                    event: ev.clone(),
                    reply,
                }))
                .await;
            rx.await.unwrap_or(false)
        }
        None => false,
    };
    if !queued {
        // No session: journal it and queue it for the cloud directly; the
        // next session of this charger picks the queue up.
        let mut ops = vec![crate::journal::Op::Event {
            charger: Some(charger.into()),
            event: ev,
        }];
        if ctx.connector.is_some() {
            let entry = crate::outbox::Entry {
                action: "StopTransaction".into(),
                payload: payload.to_string(),
                queued_ms: 0,
                attempts: 0,
                local_tx: None,
            };
            ops.push(crate::journal::Op::Outbox(crate::outbox::Op::Push {
                charger: charger.into(),
                key: ctx.journal.next_outbox_key(),
                entry,
            }));
        }
        if let Err(e) = ctx.journal.commit(ops).await {
            log::error!(charger_id = charger; "cannot close force-stopped transaction {tx_id}: {e}");
        }
    }
}

/// Close a 2.0.1 transaction in the journal only (its TransactionEvents
/// are numbered by the charger).
async fn close_201(ctx: &Ctx, charger: &str, r: &str, meter_stop: i64, timestamp: String) {
    let ev = Event::StopTransaction {
        transaction_id: None,
        transaction_ref: Some(r.to_string()),
        meter_stop,
        reason: Some("Other".into()),
        timestamp,
        answered_by: Source::Gateway,
        forced: true,
    };
    if let Err(e) = ctx.journal.record_durable(Some(charger), ev).await {
        log::error!(charger_id = charger; "cannot close force-stopped transaction {r}: {e}");
    }
}

/// The transaction being force-stopped.
enum TxKey {
    V16(i64),
    V201(String),
}

impl TxKey {
    fn is(&self, t: &crate::state::Transaction) -> bool {
        match self {
            TxKey::V16(id) => t.transaction_id == Some(*id),
            TxKey::V201(r) => t.transaction_ref.as_deref() == Some(r.as_str()),
        }
    }

    fn ends(&self, ev: &Event) -> bool {
        match (self, ev) {
            (TxKey::V16(id), Event::StopTransaction { transaction_id, .. }) => {
                *transaction_id == Some(*id)
            }
            (
                TxKey::V201(r),
                Event::StopTransaction {
                    transaction_ref, ..
                },
            ) => transaction_ref.as_deref() == Some(r.as_str()),
            _ => false,
        }
    }
}

/// Wait up to `wait` for the charger's StopTransaction of `tx`.
async fn stopped(
    stream: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<crate::event::Record>>,
    charger: &str,
    tx: &TxKey,
    wait: Duration,
) -> bool {
    let found = tokio::time::timeout(wait, async {
        loop {
            match stream.recv().await {
                Ok(r) if r.charger.as_deref() == Some(charger) => {
                    if tx.ends(&r.event) {
                        return true;
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    found.unwrap_or(false)
}
