//! The one-line description of each event that people read in the log
//! (`chargegate log`, the web page, MQTT's last event).

use super::Event;

impl Event {
    /// A one-line description for people (the CLI's log view).
    pub fn summary(&self) -> String {
        match self {
            Event::Connect { .. }
            | Event::Disconnect { .. }
            | Event::Refused { .. }
            | Event::MirrorConnect { .. }
            | Event::MirrorDisconnect { .. } => self.link_summary(),
            Event::BootNotification { .. }
            | Event::StatusNotification { .. }
            | Event::Authorize { .. }
            | Event::ChargerCall { .. } => self.charger_summary(),
            Event::StartTransaction { .. }
            | Event::StopTransaction { .. }
            | Event::MeterValues { .. } => self.transaction_summary(),
            Event::RemoteAction { .. }
            | Event::Replayed { .. }
            | Event::ReplayRetry { .. }
            | Event::DeadLetter { .. } => self.action_summary(),
            _ => self.gateway_summary(),
        }
    }

    /// The links: connects, disconnects, refusals, mirrors.
    fn link_summary(&self) -> String {
        match self {
            Event::Connect {
                link,
                remote,
                protocol,
            } => {
                format!(
                    "{link:?} link up{}{}",
                    remote
                        .as_ref()
                        .map(|r| format!(" from {r}"))
                        .unwrap_or_default(),
                    protocol
                        .as_ref()
                        .map(|p| format!(" ({p})"))
                        .unwrap_or_default()
                )
            }
            Event::Disconnect { link, reason, code } => {
                format!(
                    "{link:?} link down: {reason}{}",
                    code.map(|c| format!(" (code {c})")).unwrap_or_default()
                )
            }
            Event::Refused {
                reason,
                remote,
                repeated,
            } => format!("{remote}: {reason}{}", more(*repeated)),
            Event::MirrorConnect {
                mirror,
                remote,
                protocol,
            } => format!("mirror {mirror} link up: {remote} ({protocol})"),
            Event::MirrorDisconnect { mirror, reason } => {
                format!("mirror {mirror} link down: {reason}")
            }
            _ => String::new(),
        }
    }

    /// A charger's own messages.
    fn charger_summary(&self) -> String {
        match self {
            Event::BootNotification {
                vendor,
                model,
                firmware,
                status,
                answered_by,
                ..
            } => {
                format!(
                    "{vendor} {model} firmware {} → {} by {answered_by}",
                    opt(firmware),
                    opt(status)
                )
            }
            Event::StatusNotification {
                connector,
                status,
                error_code,
                info,
            } => format!(
                "connector {connector} {status}{}{}",
                if error_code == "NoError" {
                    String::new()
                } else {
                    format!(" error {error_code}")
                },
                info.as_ref().map(|i| format!(" ({i})")).unwrap_or_default()
            ),
            Event::Authorize {
                id_tag,
                status,
                answered_by,
            } => format!("{id_tag} → {} by {answered_by}", opt(status)),
            Event::ChargerCall {
                action,
                status,
                answered_by,
            } => format!("{action} → {} by {answered_by}", opt(status)),
            _ => String::new(),
        }
    }

    /// Transactions and their meter readings.
    fn transaction_summary(&self) -> String {
        match self {
            Event::StartTransaction {
                connector,
                id_tag,
                meter_start,
                transaction_id,
                transaction_ref,
                status,
                ..
            } => format!(
                "connector {connector} tag {id_tag} meter {meter_start} Wh → transaction {} {}",
                tx_name(transaction_id, transaction_ref),
                opt(status)
            ),
            Event::StopTransaction {
                transaction_id,
                transaction_ref,
                meter_stop,
                reason,
                forced,
                ..
            } => {
                format!(
                    "{}transaction {} meter {meter_stop} Wh reason {}",
                    if *forced {
                        "FORCE-STOPPED (not billable) "
                    } else {
                        ""
                    },
                    tx_name(transaction_id, transaction_ref),
                    opt(reason)
                )
            }
            Event::MeterValues {
                connector,
                transaction_id,
                transaction_ref,
                energy_wh,
                power_w,
                current_a,
                ..
            } => {
                let f =
                    |v: &Option<f64>, u: &str| v.map(|v| format!(" {v}{u}")).unwrap_or_default();
                format!(
                    "connector {connector}{}{}{}{}",
                    if transaction_id.is_some() || transaction_ref.is_some() {
                        format!(" transaction {}", tx_name(transaction_id, transaction_ref))
                    } else {
                        String::new()
                    },
                    f(energy_wh, " Wh"),
                    f(power_w, " W"),
                    f(current_a, " A")
                )
            }
            _ => String::new(),
        }
    }

    /// Remote actions, and the outbox's replays and dead letters.
    fn action_summary(&self) -> String {
        match self {
            Event::RemoteAction {
                action,
                source,
                result,
                error,
                part_of,
                ..
            } => {
                let step = part_of
                    .as_ref()
                    .map(|p| format!(" (step of {p})"))
                    .unwrap_or_default();
                match (result, error) {
                    (_, Some(e)) => format!("{action} from {source}{step}: {e}"),
                    // A force stop's report: its outcome and steps in words.
                    (Some(r), None) if r.get("steps").is_some() => format!(
                        "{action} from {source}: {}; steps: {}",
                        r["status"].as_str().unwrap_or("-"),
                        r["steps"]
                            .as_array()
                            .map(|s| s
                                .iter()
                                .map(|s| format!(
                                    "{} {}",
                                    s["call"].as_str().unwrap_or("?"),
                                    s["outcome"].as_str().unwrap_or("?")
                                ))
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default()
                    ),
                    (Some(r), None) => format!("{action} from {source}{step}: {r}"),
                    (None, None) => format!("{action} from {source}{step}"),
                }
            }
            Event::Replayed {
                action,
                local_transaction_id,
                cloud_transaction_id,
                status,
                ..
            } => format!(
                "{action} delivered to the cloud{}{}",
                match (local_transaction_id, cloud_transaction_id) {
                    (Some(l), Some(c)) => format!(", transaction {l} is {c} in the cloud"),
                    _ => String::new(),
                },
                status
                    .as_ref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            Event::ReplayRetry {
                action,
                attempt,
                error,
            } => format!("{action} refused by the cloud (attempt {attempt}): {error}"),
            Event::DeadLetter { action, error, .. } => format!("{action} given up: {error}"),
            _ => String::new(),
        }
    }

    /// What the gateway did or saw: remote actions, replays, storage, limits.
    fn gateway_summary(&self) -> String {
        match self {
            Event::GatewayStarted { version } => format!("version {version}"),
            Event::GatewayStopping => String::new(),
            Event::DiagnosticsUploaded { file, bytes } => format!("{file} ({bytes} bytes)"),
            Event::StorageAlarm {
                error,
                failed_commits,
                began_ms,
            } => {
                let since = began_ms
                    .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                    .map(|t| format!(" since {}", t.strftime("%Y-%m-%dT%H:%M:%SZ")))
                    .unwrap_or_default();
                format!("{failed_commits} journal commit(s) failed{since}: {error}; writing again")
            }
            Event::ProtocolError {
                from,
                code,
                detail,
                repeated,
                ..
            } => format!("from {from}: {code}: {detail}{}", more(*repeated)),
            Event::LimitChanged { limit_a, reason } => format!("limit {limit_a} A: {reason}"),
            Event::Override {
                mode,
                limit_a,
                until,
                source,
            } => format!(
                "{mode}{} by {source}{}",
                limit_a.map(|a| format!(" {a} A")).unwrap_or_default(),
                until
                    .as_ref()
                    .map(|u| format!(" until {u}"))
                    .unwrap_or_default()
            ),
            Event::MeterLost { error, fallback_a } => {
                format!("site meter lost ({error}); every charger falls back to {fallback_a} A")
            }
            Event::MeterRestored { detail } => format!("site meter back: {detail}"),
            _ => String::new(),
        }
    }
}

/// " (and N more like it)" for an event that stands for repeats.
fn more(repeated: Option<u64>) -> String {
    match repeated {
        Some(n) if n > 0 => format!(" ({n} more like it since the last one, not journaled)"),
        _ => String::new(),
    }
}

/// A transaction's name in the log: 1.6's number or 2.0.1's string.
fn tx_name(id: &Option<i64>, reference: &Option<String>) -> String {
    match (id, reference) {
        (Some(i), _) => i.to_string(),
        (None, Some(r)) => r.clone(),
        (None, None) => "-".into(),
    }
}

/// An optional field as the log shows it: `-` when absent.
fn opt(o: &Option<String>) -> String {
    o.clone().unwrap_or_else(|| "-".into())
}
