//! The smart-charging loop: once a second (and at once when a charger
//! connects, boots, starts or stops a session, or staff pause one) it
//! gathers what [`decide`](super::decide) needs — the config in force, the
//! live state, the connected chargers, the meter — and carries out what it
//! decides: journal entries, charging profiles sent in their own tasks, the
//! status the API shows. The decisions themselves are pure, in
//! `decide.rs`, with their tests.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::decide::{self, Decision, EngineState, Inputs, Sent};
use super::plan::Plan;
use super::status::StatusHandle;
use crate::clock::Clock;
use crate::event::Source;
use crate::hub::{CallOutcome, Ctx};
use crate::meter::MeterStatus;

/// Run the engine until shutdown. Chargers with no schedule, no load
/// management and no pause are left alone: no profile, no journal entry.
pub async fn run(
    ctx: Ctx,
    clock: Clock,
    meter: Option<watch::Receiver<MeterStatus>>,
    status: StatusHandle,
) {
    let mut events = ctx.journal.subscribe();
    let (sent_tx, mut sent_rx) = mpsc::channel::<Sent>(64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let overrides = ctx
        .journal
        .state()
        .chargers
        .values()
        .any(|c| c.override_.is_some() || c.cap.is_some());
    let mut st = EngineState::new(Instant::now(), overrides);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            ev = events.recv() => match ev {
                Ok(rec) => {
                    if !st.on_record(&rec, Instant::now()) {
                        continue;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            Some(done) = sent_rx.recv() => {
                st.on_sent(done, Instant::now());
                continue;
            }
            _ = ctx.shutdown.cancelled() => return,
        }
        // The config in force now: a SIGHUP may have changed schedules.
        let cfg = ctx.live.get();
        if st.idle(&cfg, meter.is_some()) {
            continue;
        }
        let state = ctx.journal.state();
        let connected = ctx.registry.connected();
        let meter_now = meter.as_ref().map(|m| m.borrow().clone());
        let inputs = Inputs {
            cfg: &cfg,
            state: &state,
            connected: &connected,
            meter: meter_now.as_ref(),
            now: clock.now(),
        };
        for d in decide::decide(&inputs, &mut st, Instant::now()) {
            match d {
                Decision::Journal { charger, event } => {
                    ctx.journal.record(charger.as_deref(), event).await
                }
                Decision::Send { charger, plan } => {
                    tokio::spawn(send(ctx.clone(), charger, plan, sent_tx.clone()));
                }
                Decision::Call {
                    charger,
                    action,
                    payload,
                } => {
                    let reg = ctx.registry.clone();
                    let wait = ctx.cfg.ocpp.call_timeout + Duration::from_secs(5);
                    tokio::spawn(async move {
                        reg.call(&charger, action, payload, Source::Smart, wait)
                            .await;
                    });
                }
                Decision::Status(now) => {
                    *status.lock().unwrap_or_else(|p| p.into_inner()) = now;
                }
            }
        }
    }
}

/// Send a plan's profiles one after the other, and report how it went.
async fn send(ctx: Ctx, id: String, plan: Plan, done: mpsc::Sender<Sent>) {
    let mut ok = true;
    // The plan is in 1.6; a 2.0.1 charger gets it restated.
    let v201 = ctx
        .journal
        .state()
        .chargers
        .get(&id)
        .is_some_and(|c| c.speaks_201());
    for call in plan.calls {
        let (action, call) = if v201 {
            super::profile::to_201(&call)
        } else if call.get("csChargingProfiles").is_some() {
            ("SetChargingProfile", call)
        } else {
            ("ClearChargingProfile", call)
        };
        let wait = ctx.cfg.ocpp.call_timeout + Duration::from_secs(5);
        let out = ctx
            .registry
            .call(&id, action, call, Source::Smart, wait)
            .await;
        let accepted = matches!(&out, Some(CallOutcome::Result(v)) if v.get("status").and_then(Value::as_str) == Some("Accepted"));
        // Nothing to clear is not a failure.
        let unknown = action == "ClearChargingProfile"
            && matches!(&out, Some(CallOutcome::Result(v)) if v.get("status").and_then(Value::as_str) == Some("Unknown"));
        if !(accepted || unknown) {
            log::warn!(
                "{id}: {action} not accepted: {}",
                out.map(|o| o.brief())
                    .unwrap_or_else(|| "disconnected".into())
            );
            ok = false;
        }
    }
    let _ = done
        .send(Sent {
            charger: id,
            standing: plan.standing_key,
            live: plan.live.filter(|_| ok),
            ok,
        })
        .await;
}
