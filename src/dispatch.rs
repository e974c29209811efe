//! Runs a remote action on a charger for every front end (the API and so
//! the CLI and the web page; MQTT later): the pure definitions of
//! `actions`, plus force stop, run a check and diagnostics, sent through the
//! charger's session and journaled there with their source.

use serde::{Deserialize, Serialize};

use crate::actions::ActionRequest;
use crate::event::Source;
use crate::hub::CallOutcome;
use crate::hub::Ctx;
use crate::state::ChargerState;

/// The answer to a remote action.
#[derive(Debug, Serialize, Deserialize)]
pub struct ActionResult {
    pub charger: String,
    pub action: String,
    /// The OCPP call that carried it.
    pub call: String,
    pub request: serde_json::Value,
    /// `result`, `error`, `timeout` or `disconnected`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why an action was not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown charger {0:?}")]
    UnknownCharger(String),
    #[error("charger {0:?} is offline (not connected to the gateway)")]
    Offline(String),
    #[error("{0}")]
    Refused(String),
}

/// Run action `name` on charger `id`.
pub async fn run(
    ctx: &Ctx,
    id: String,
    name: String,
    req: ActionRequest,
    source: Source,
) -> Result<ActionResult, Error> {
    let state = ctx.journal.state();
    let charger = state.chargers.get(&id).map(|c| &**c);
    if crate::actions::LOCAL.contains(&name.as_str()) {
        return run_override(ctx, id, name, req, source, charger).await;
    }
    match name.as_str() {
        "check" => run_check(ctx, id, name, req, source, charger).await,
        "force-stop" => run_force_stop(ctx, id, name, req, source, charger).await,
        _ => run_call(ctx, id, name, req, source, charger).await,
    }
}

/// A pause, cap or resume: journaled durably; the smart engine sends the
/// profile that follows.
async fn run_override(
    ctx: &Ctx,
    id: String,
    name: String,
    req: ActionRequest,
    source: Source,
    charger: Option<&ChargerState>,
) -> Result<ActionResult, Error> {
    // Connected is known too, even before its first events are in.
    if charger.is_none()
        && ctx.registry.get(&id).is_none()
        && !ctx.live.get().chargers.contains_key(&id)
    {
        return Err(Error::UnknownCharger(id));
    }
    let (mode, limit_a, until) = crate::actions::to_override(&name, &req, ctx.clock.now())
        .map_err(|e| Error::Refused(e.to_string()))?;
    let event = crate::event::Event::Override {
        mode: mode.clone(),
        limit_a,
        until: until.clone(),
        source,
    };
    ctx.journal
        .record_durable(Some(&id), event)
        .await
        .map_err(|e| Error::Refused(format!("cannot journal it: {e}")))?;
    Ok(ActionResult {
        charger: id,
        action: name,
        call: "(smart charging: a charging profile follows)".into(),
        request: serde_json::json!({ "mode": mode, "limit_a": limit_a, "until": until }),
        outcome: "result".into(),
        result: Some(serde_json::json!({ "status": "Accepted" })),
        error: None,
    })
}

/// Run a check: TriggerMessage and GetConfiguration/GetVariables, reported.
async fn run_check(
    ctx: &Ctx,
    id: String,
    name: String,
    _req: ActionRequest,
    source: Source,
    charger: Option<&ChargerState>,
) -> Result<ActionResult, Error> {
    if ctx.registry.get(&id).is_none()
        && charger.is_none()
        && !ctx.live.get().chargers.contains_key(&id)
    {
        return Err(Error::UnknownCharger(id));
    }
    let report = crate::check::run(ctx, &id, source, ctx.cfg.ocpp.call_timeout).await;
    Ok(ActionResult {
        charger: id,
        action: name,
        call: "TriggerMessage".into(),
        request: serde_json::json!({ "requestedMessage": ["StatusNotification", "Heartbeat", "MeterValues"] }),
        outcome: "result".into(),
        result: serde_json::to_value(&report).ok(),
        error: None,
    })
}

/// Force stop: the escalation of `force_stop`.
async fn run_force_stop(
    ctx: &Ctx,
    id: String,
    name: String,
    req: ActionRequest,
    source: Source,
    charger: Option<&ChargerState>,
) -> Result<ActionResult, Error> {
    if ctx.registry.get(&id).is_none() && charger.is_none() {
        return Err(Error::UnknownCharger(id));
    }
    let connector = req.connector.unwrap_or(1);
    match crate::force_stop::run(ctx, &id, connector, source, ctx.cfg.actions.force_stop_wait).await
    {
        Ok(report) => Ok(ActionResult {
            charger: id,
            action: name,
            call: format!(
                "{} (escalating)",
                report
                    .steps
                    .first()
                    .map_or("RemoteStopTransaction", |s| s.call.as_str())
            ),
            request: serde_json::json!({ "connectorId": connector }),
            outcome: "result".into(),
            result: serde_json::to_value(&report).ok(),
            error: None,
        }),
        Err(e) => Err(Error::Refused(e.to_string())),
    }
}

/// Every other action: one call to the charger, and its outcome.
async fn run_call(
    ctx: &Ctx,
    id: String,
    name: String,
    req: ActionRequest,
    source: Source,
    charger: Option<&ChargerState>,
) -> Result<ActionResult, Error> {
    let connected = ctx.registry.get(&id);
    if charger.is_none() && connected.is_none() && !ctx.live.get().chargers.contains_key(&id) {
        return Err(Error::UnknownCharger(id));
    }
    let (call, payload) = if name == "diagnostics" {
        // The charger uploads to the gateway's own listener, at the address
        // it reached the gateway on, with a one-time token.
        let Some(local) = ctx.registry.local_addr(&id) else {
            return Err(Error::Offline(id));
        };
        let token = ctx
            .uploads
            .issue(&id)
            .map_err(|e| Error::Refused(e.to_string()))?;
        let location = crate::diagnostics::location(local.ip(), ctx.upload_addr, &token);
        (
            "GetDiagnostics",
            serde_json::json!({ "location": location, "retries": 1 }),
        )
    } else {
        match crate::actions::to_call(&name, &req, charger, &ctx.cfg.actions.default_id_tag) {
            Ok(c) => c,
            Err(e) => return Err(Error::Refused(e.to_string())),
        }
    };
    if connected.is_none() {
        return Err(Error::Offline(id));
    }
    // The session times the call out itself (call_timeout); this is a backstop.
    let wait = ctx.cfg.ocpp.call_timeout * 3 + std::time::Duration::from_secs(5);
    let Some(outcome) = ctx
        .registry
        .call(&id, call, payload.clone(), source, wait)
        .await
    else {
        return Err(Error::Offline(id));
    };
    let (outcome, result, err) = match outcome {
        CallOutcome::Result(v) => ("result", Some(v), None),
        CallOutcome::Error { code, description } => {
            ("error", None, Some(format!("{code}: {description}")))
        }
        CallOutcome::Timeout => (
            "timeout",
            None,
            Some("the charger did not answer in time".to_string()),
        ),
        CallOutcome::Disconnected => (
            "disconnected",
            None,
            Some("the charger disconnected before answering".to_string()),
        ),
    };
    Ok(ActionResult {
        charger: id,
        action: name,
        call: call.into(),
        request: crate::event::redact(call, &payload),
        outcome: outcome.into(),
        result,
        error: err,
    })
}
