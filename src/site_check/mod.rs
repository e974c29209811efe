//! "Is this site ready?": the commissioning report for the whole site.
//! Every configured and connected charger is asked, in parallel (one CALL
//! at a time each, under a timeout), for its configuration and a fresh
//! meter reading; with the journal of the last 24 h and the live state,
//! each charger and the site are judged (`judge`, pure) into findings in
//! words. Nothing is changed on a charger.

pub mod judge;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::event::{Event, Link, Source};
use crate::hub::{CallOutcome, Ctx};
use crate::journal::Query;
use judge::{Finding, Gathered, Recent, Settings, Severity, SiteFacts};

/// One charger's part of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargerReport {
    pub id: String,
    /// Listed in the config (else: connected as an unknown charger).
    pub configured: bool,
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub findings: Vec<Finding>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteReport {
    pub gateway_id: String,
    pub version: String,
    /// RFC 3339, when the check ran.
    pub generated: String,
    /// How long the check took, milliseconds.
    pub took_ms: u64,
    pub problems: usize,
    pub warnings: usize,
    pub site: Vec<Finding>,
    pub chargers: Vec<ChargerReport>,
}

/// The longest the check waits for one charger's answers, in all.
pub const CHARGER_TIMEOUT: Duration = Duration::from_secs(10);

/// Run the check on the whole site.
pub async fn run(ctx: &Ctx, source: Source, per_charger: Duration) -> SiteReport {
    let started = Instant::now();
    let cfg = ctx.live.get();
    let connected: BTreeSet<String> = ctx.registry.connected().into_iter().collect();
    let ids: BTreeSet<String> = cfg
        .chargers
        .keys()
        .cloned()
        .chain(connected.iter().cloned())
        .collect();
    let settings = settings(&cfg);
    let asks = ids.iter().map(|id| {
        let ctx = ctx.clone();
        let id = id.clone();
        let configured = cfg.chargers.get(&id);
        let profile = configured.map_or(1, |c| c.profile);
        let is_configured = configured.is_some();
        let is_connected = connected.contains(&id);
        async move {
            let config = if is_connected {
                match tokio::time::timeout(per_charger, ask(&ctx, &id, source, per_charger)).await {
                    Ok(c) => c,
                    Err(_) => Err(format!("no answer within {} s", per_charger.as_secs())),
                }
            } else {
                Err("not connected".into())
            };
            Gathered {
                state: ctx.journal.state().chargers.get(&id).map(|c| (**c).clone()),
                recent: recent(&ctx, &id),
                outbox: ctx.journal.outbox_stats(&id).unwrap_or_default(),
                id,
                configured: is_configured,
                connected: is_connected,
                config,
                profile,
            }
        }
    });
    let gathered = futures_util::future::join_all(asks).await;
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let chargers: Vec<ChargerReport> = gathered
        .iter()
        .map(|g| ChargerReport {
            id: g.id.clone(),
            configured: g.configured,
            connected: g.connected,
            protocol: g
                .state
                .as_ref()
                .and_then(|s| s.charger_link.protocol.clone()),
            findings: judge::charger(g, &settings, now_ms),
        })
        .collect();
    let site = judge::site(&site_facts(ctx, &cfg, &gathered).await);
    let count = |sev: Severity| {
        site.iter()
            .chain(chargers.iter().flat_map(|c| c.findings.iter()))
            .filter(|f| f.severity == sev)
            .count()
    };
    SiteReport {
        gateway_id: cfg.gateway.id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        generated: crate::clock::now_rfc3339(),
        took_ms: started.elapsed().as_millis() as u64,
        problems: count(Severity::Problem),
        warnings: count(Severity::Warning),
        site,
        chargers,
    }
}

fn settings(cfg: &crate::config::Config) -> Settings {
    let mut scheduled = BTreeSet::new();
    let mut all = false;
    for s in &cfg.smart.schedules {
        for c in &s.chargers {
            if c == "*" {
                all = true;
            } else {
                scheduled.insert(c.clone());
            }
        }
    }
    let rate_units = cfg
        .chargers
        .iter()
        .map(|(id, c)| {
            let unit = match c.limits.electrical.unit {
                crate::smart::profile::RateUnit::Amps => "Current",
                crate::smart::profile::RateUnit::Watts => "Power",
            };
            (id.clone(), unit)
        })
        .collect();
    Settings {
        cloud: cfg.upstream.is_some(),
        load_management: cfg.smart.load.is_some(),
        scheduled,
        all_scheduled: all,
        // The live profile sits one above the standing one.
        stack_level: cfg.smart.smart.stack_level + 1,
        rate_units,
    }
}

/// Ask a charger for its configuration, and for a fresh meter reading
/// (its timestamp shows the charger's clock). Reads only.
async fn ask(
    ctx: &Ctx,
    id: &str,
    source: Source,
    wait: Duration,
) -> Result<BTreeMap<String, String>, String> {
    let v201 = ctx
        .journal
        .state()
        .chargers
        .get(id)
        .is_some_and(|c| c.speaks_201());
    let (action, payload) = if v201 {
        let data: Vec<Value> = V201_KEYS
            .iter()
            .map(|(cv, _)| {
                let (c, v) = cv.split_once('.').unwrap_or(("", cv));
                json!({"component": {"name": c}, "variable": {"name": v}})
            })
            .collect();
        ("GetVariables", json!({"getVariableData": data}))
    } else {
        ("GetConfiguration", json!({}))
    };
    let config = match ctx.registry.call(id, action, payload, source, wait).await {
        Some(CallOutcome::Result(v)) if v201 => Ok(from_variables(&v)),
        Some(CallOutcome::Result(v)) => Ok(from_configuration(&v)),
        Some(o) => Err(o.brief()),
        None => Err("charger disconnected".into()),
    };
    // Its clock: the answer to this trigger is a timestamped MeterValues,
    // which the session compares with the gateway's clock.
    let trigger = json!({"requestedMessage": "MeterValues"});
    if let Some(CallOutcome::Result(_)) = ctx
        .registry
        .call(id, "TriggerMessage", trigger, source, wait)
        .await
    {
        let mut stream = ctx.journal.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(r) = stream.recv().await {
                if r.charger.as_deref() == Some(id) && matches!(r.event, Event::MeterValues { .. })
                {
                    return;
                }
            }
        })
        .await;
    }
    config
}

/// The 2.0.1 variables read, and the 1.6 keys they stand for.
const V201_KEYS: &[(&str, &str)] = &[
    ("OCPPCommCtrlr.HeartbeatInterval", "HeartbeatInterval"),
    (
        "SampledDataCtrlr.TxUpdatedInterval",
        "MeterValueSampleInterval",
    ),
    (
        "SampledDataCtrlr.TxUpdatedMeasurands",
        "MeterValuesSampledData",
    ),
    ("SmartChargingCtrlr.Enabled", "SupportedFeatureProfiles"),
    ("LocalAuthListCtrlr.Enabled", "LocalAuthListEnabled"),
    (
        "AuthCtrlr.AuthorizeRemoteStart",
        "AuthorizeRemoteTxRequests",
    ),
];

/// A GetConfiguration answer as key → value (bounded: a charger's answer
/// is within the frame size limit already).
fn from_configuration(v: &Value) -> BTreeMap<String, String> {
    v["configurationKey"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| {
            Some((
                k["key"].as_str()?.to_string(),
                k["value"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// A GetVariables answer restated as the 1.6 keys the judgement reads.
fn from_variables(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in v["getVariableResult"].as_array().into_iter().flatten() {
        if r["attributeStatus"] != "Accepted" {
            continue;
        }
        let name = format!(
            "{}.{}",
            r["component"]["name"].as_str().unwrap_or(""),
            r["variable"]["name"].as_str().unwrap_or("")
        );
        let value = r["attributeValue"].as_str().unwrap_or("").to_string();
        if let Some((_, key)) = V201_KEYS.iter().find(|(cv, _)| *cv == name) {
            let value = if *key == "SupportedFeatureProfiles" {
                if value.eq_ignore_ascii_case("true") {
                    "Core,SmartCharging"
                } else {
                    "Core"
                }
                .to_string()
            } else {
                value
            };
            out.insert(key.to_string(), value);
        }
    }
    out
}

/// What the journal of the last 24 h says about a charger.
fn recent(ctx: &Ctx, id: &str) -> Recent {
    let since = jiff::Timestamp::now().as_millisecond() - 24 * 3600 * 1000;
    let q = Query {
        charger: Some(id.into()),
        kinds: [
            "Connect",
            "StatusNotification",
            "ProtocolError",
            "RemoteAction",
            "LimitChanged",
        ]
        .map(String::from)
        .to_vec(),
        since_ms: Some(since),
        until_ms: None,
        after_seq: None,
        limit: 20_000,
    };
    let mut r = Recent::default();
    for rec in ctx.journal.query(&q).unwrap_or_default() {
        match &rec.event {
            Event::Connect {
                link: Link::Charger,
                ..
            } => r.connects += 1,
            Event::StatusNotification {
                status, error_code, ..
            } => {
                if error_code != "NoError" && r.error_codes.len() < 20 {
                    r.error_codes.insert(error_code.clone());
                }
                if let Some((suspended, charging)) = r.paused.as_mut() {
                    use crate::ocpp::messages::ChargePointStatus as S;
                    let status = S::parse(status);
                    *suspended |= status == Some(S::SuspendedEVSE);
                    *charging |= status == Some(S::Charging);
                }
            }
            Event::ProtocolError { .. } => r.protocol_errors += 1,
            Event::RemoteAction {
                action,
                source: Source::Smart,
                result,
                error,
                ..
            } if action == "SetChargingProfile" => {
                r.last_profile_answer = Some(match (result, error) {
                    (Some(v), _) => v["status"].as_str().unwrap_or("answered").to_string(),
                    (None, Some(e)) => e.clone(),
                    (None, None) => "no answer".into(),
                });
            }
            Event::LimitChanged { limit_a, .. } => {
                r.paused = (*limit_a == 0.0).then_some((false, false));
            }
            _ => {}
        }
    }
    r
}

async fn site_facts(ctx: &Ctx, cfg: &crate::config::Config, gathered: &[Gathered]) -> SiteFacts {
    let state = ctx.journal.state();
    let connected: Vec<&Gathered> = gathered.iter().filter(|g| g.connected).collect();
    let smart = ctx.smart.lock().map(|s| s.clone()).unwrap_or_default();
    let meter = cfg.smart.meter.as_ref().map(|_| {
        let m = smart.meter.clone().unwrap_or_default();
        judge::MeterFacts {
            reachable: m.connected && m.last.is_some(),
            max_phase_a: m
                .last
                .as_ref()
                .map(|r| r.current.iter().copied().fold(0.0, f64::max)),
            error: m.error,
        }
    });
    let now = ctx.clock.now();
    let tz = &cfg.smart.tz;
    let schedules = cfg
        .smart
        .schedules
        .iter()
        .map(|s| {
            let steps = s
                .schedule
                .steps(now, now + jiff::SignedDuration::from_hours(24 * 8), tz);
            let show = |a: crate::smart::schedule::Allowed| match a {
                crate::smart::schedule::Allowed::Closed => "closed (0 A)".to_string(),
                crate::smart::schedule::Allowed::Open(None) => "open".to_string(),
                crate::smart::schedule::Allowed::Open(Some(c)) => format!("open up to {c} A"),
            };
            let next = steps
                .get(1)
                .map(|(t, a)| {
                    format!(
                        ", {} from {}",
                        show(*a),
                        t.to_zoned_datetime(tz.clone())
                            .strftime("%a %Y-%m-%d %H:%M %Z")
                    )
                })
                .unwrap_or_default();
            format!(
                "schedule {:?} for {}: {} now{next}",
                s.schedule.name,
                s.chargers.join(", "),
                show(steps[0].1)
            )
        })
        .collect();
    let (records, _) = ctx.journal.stats().unwrap_or((0, 0));
    let db = cfg.gateway.data_dir.join("journal.redb");
    SiteFacts {
        cloud_url: cfg.upstream.as_ref().map(|u| u.url.clone()),
        connected: connected.len(),
        cloud_up: connected
            .iter()
            .filter(|g| state.chargers.get(&g.id).is_some_and(|c| c.cloud_link.up))
            .count(),
        fuse: cfg.smart.load.as_ref().map(|l| (l.fuse, l.margin)),
        meter,
        chargers_drawing_a: connected
            .iter()
            .filter_map(|g| state.chargers.get(&g.id))
            .filter(|c| !c.transactions.is_empty())
            .filter_map(|c| c.meter.current_a)
            .sum(),
        schedules,
        journal_records: records,
        journal_bytes: std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0),
        journal_alarm: ctx.journal.alarm(),
        disk_free_bytes: disk_free(&cfg.gateway.data_dir),
        clock_synchronised: clock_synchronised().await,
    }
}

/// Bytes free for unprivileged writers where the journal lives.
// The field types are u64 here but narrower on some 32-bit targets.
#[allow(clippy::unnecessary_cast)]
fn disk_free(dir: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Whether systemd-timesyncd or chrony (through timedated) says the clock
/// is synchronised; `None` when there is no way to tell.
async fn clock_synchronised() -> Option<bool> {
    if std::path::Path::new("/run/systemd/timesync/synchronized").exists() {
        return Some(true);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::process::Command::new("timedatectl")
            .args(["show", "-p", "NTPSynchronized", "--value"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// The report as text for a terminal or a commissioning record.
pub fn format_text(r: &SiteReport) -> String {
    let mark = |s: Severity| match s {
        Severity::Ok => "ok     ",
        Severity::Warning => "WARNING",
        Severity::Problem => "PROBLEM",
    };
    let mut out = format!(
        "Site check of gateway {} (ChargeGate {}), {}, {} charger(s), took {:.1} s\n",
        r.gateway_id,
        r.version,
        r.generated,
        r.chargers.len(),
        r.took_ms as f64 / 1000.0
    );
    let mut section = |title: &str, findings: &[Finding]| {
        out.push_str(&format!("\n{title}\n"));
        for f in findings {
            out.push_str(&format!(
                "  {} {:<15} {}\n",
                mark(f.severity),
                f.topic,
                crate::text::printable(&f.what)
            ));
            if let Some(t) = &f.todo {
                out.push_str(&format!("          {:<15} → {t}\n", ""));
            }
        }
    };
    section("Site", &r.site);
    for c in &r.chargers {
        let title = format!(
            "Charger {}{}{}",
            c.id,
            c.protocol
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default(),
            if c.configured {
                ""
            } else {
                " [not in the config]"
            }
        );
        section(&title, &c.findings);
    }
    out.push_str(&format!(
        "\n{}: {} problem(s), {} warning(s)\n",
        if r.problems == 0 {
            "READY"
        } else {
            "NOT READY"
        },
        r.problems,
        r.warnings
    ));
    out
}
