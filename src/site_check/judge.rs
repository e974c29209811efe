//! The site check's judgement, pure: what was gathered about each charger
//! and the site in, findings in words out (severity, what it means, what
//! to do). Unit-tested without sockets.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::outbox::Stats;
use crate::state::ChargerState;

/// A charger's configuration keys and values, as it reported them.
type Config = BTreeMap<String, String>;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Problem,
}

/// One thing the check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// What it is about: link, cloud, identity, clock, heartbeat, meter
    /// values, smart charging, authorization, errors, meter, load, …
    pub topic: String,
    /// One sentence: what was found and what it means.
    pub what: String,
    /// One sentence: what to do (none when all is well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub todo: Option<String>,
}

fn ok(topic: &str, what: String) -> Finding {
    Finding {
        severity: Severity::Ok,
        topic: topic.into(),
        what,
        todo: None,
    }
}

fn warn(topic: &str, what: String, todo: String) -> Finding {
    Finding {
        severity: Severity::Warning,
        topic: topic.into(),
        what,
        todo: Some(todo),
    }
}

fn problem(topic: &str, what: String, todo: String) -> Finding {
    Finding {
        severity: Severity::Problem,
        topic: topic.into(),
        what,
        todo: Some(todo),
    }
}

/// What the last 24 hours of the journal say about a charger.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recent {
    /// Times its link came up.
    pub connects: u32,
    /// Error codes in its StatusNotifications (not NoError).
    pub error_codes: BTreeSet<String>,
    pub protocol_errors: u32,
    /// How it answered the smart engine's last SetChargingProfile.
    pub last_profile_answer: Option<String>,
    /// After the last pause (a 0 A limit) the gateway set: whether it
    /// reported SuspendedEVSE, and whether it reported Charging.
    pub paused: Option<(bool, bool)>,
}

/// What the gateway gathered about one charger.
#[derive(Debug, Clone)]
pub struct Gathered {
    pub id: String,
    pub configured: bool,
    pub connected: bool,
    pub state: Option<ChargerState>,
    /// Its configuration keys (1.6 GetConfiguration, or the 2.0.1
    /// variables restated as their 1.6 keys); `Err`: why none came.
    pub config: Result<BTreeMap<String, String>, String>,
    pub recent: Recent,
    pub outbox: Stats,
    /// The security profile configured for it.
    pub profile: u8,
}

/// The site's settings the judgement needs.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub cloud: bool,
    pub load_management: bool,
    /// Chargers a schedule applies to.
    pub scheduled: BTreeSet<String>,
    /// Every charger the site has a schedule for (`*`).
    pub all_scheduled: bool,
    /// The highest stack level the gateway's profiles use.
    pub stack_level: u32,
    /// Per charger: the unit its limits are sent in ("Current"/"Power").
    pub rate_units: BTreeMap<String, &'static str>,
}

impl Settings {
    fn smart_for(&self, id: &str) -> bool {
        self.load_management || self.all_scheduled || self.scheduled.contains(id)
    }
}

/// The action that changes a 1.6 configuration key.
fn change(id: &str, key: &str, value: &str) -> String {
    format!("chargegate action change-config {id} --key {key} --value {value}")
}

fn listed(list: &str, item: &str) -> bool {
    list.split(',').any(|s| s.trim().eq_ignore_ascii_case(item))
}

/// Judge one charger.
pub fn charger(g: &Gathered, s: &Settings, now_ms: i64) -> Vec<Finding> {
    let mut f = Vec::new();
    let id = g.id.as_str();
    let st = g.state.clone().unwrap_or_default();
    if !links(&mut f, g, s, &st) {
        return f;
    }
    identity_and_clock(&mut f, id, &st);
    errors(&mut f, g, id, &st);
    // Configuration.
    let cfg = match &g.config {
        Ok(c) => c,
        Err(why) => {
            f.push(problem(
                "config",
                format!("its configuration could not be read ({why})"),
                format!("chargegate action get-config {id}; if it does not answer, reboot it"),
            ));
            return f;
        }
    };
    intervals_and_samples(&mut f, cfg, s, id);
    smart_charging(&mut f, g, cfg, s, id);
    authorization(&mut f, cfg);
    let _ = now_ms;
    f
}

/// The charger's links: to the gateway, the mirrors, the cloud. Whether
/// it is connected (nothing more can be judged if not).
fn links(f: &mut Vec<Finding>, g: &Gathered, s: &Settings, st: &ChargerState) -> bool {
    let id = g.id.as_str();
    if !g.connected {
        let since = st
            .charger_link
            .since_ms
            .map(|t| format!(" since {}", crate::clock::format_unix_ms(t)))
            .unwrap_or_else(|| " (never seen)".into());
        f.push(problem(
            "link",
            format!("not connected to the gateway{since}"),
            format!("check the charger's power and network, and that its central system URL is ws://GATEWAY:PORT/ocpp/{id}"),
        ));
        return false;
    }
    let proto = st
        .charger_link
        .protocol
        .clone()
        .unwrap_or_else(|| "ocpp1.6".into());
    let since = st
        .charger_link
        .since_ms
        .map(crate::clock::format_unix_ms)
        .unwrap_or_else(|| "-".into());
    let over = if st.charger_link_tls() {
        "wss:// (TLS)"
    } else {
        "ws://"
    };
    f.push(ok(
        "link",
        format!(
            "connected since {since} over {over} ({proto}, security profile {} configured)",
            g.profile
        ),
    ));
    for (name, l) in &st.mirrors {
        if l.up {
            f.push(ok("mirror", format!("{name}: link up")));
        } else {
            f.push(warn(
                "mirror",
                format!("{name}: link down ({})", l.reason.as_deref().unwrap_or("unknown reason")),
                format!("check [[mirror]] {name:?} (url, password) and `chargegate log --charger {id} --kind MirrorDisconnect`"),
            ));
        }
    }
    if g.recent.connects > 5 {
        f.push(warn(
            "link",
            format!("reconnected {} times in the last 24 h: an unstable network or a charger that reboots", g.recent.connects),
            "check its network (Wi-Fi signal, cable) and its error log".into(),
        ));
    }
    if s.cloud {
        if st.cloud_link.up {
            f.push(ok("cloud", "its cloud link is up".into()));
        } else {
            let why = st.cloud_link.reason.as_deref().unwrap_or("unknown reason");
            f.push(problem(
                "cloud",
                format!("its cloud link is down ({why}): the cloud does not see it"),
                "check [upstream] url and credentials in the config, and `chargegate log` for the cloud's answer".into(),
            ));
        }
    }
    true
}

/// Who it says it is (BootNotification), and how far its clock is off.
fn identity_and_clock(f: &mut Vec<Finding>, id: &str, st: &ChargerState) {
    match &st.boot {
        Some(b) => f.push(ok(
            "identity",
            format!(
                "{} {}, serial {}, firmware {}",
                b.vendor,
                b.model,
                b.serial.as_deref().unwrap_or("-"),
                b.firmware.as_deref().unwrap_or("-")
            ),
        )),
        None => f.push(warn(
            "identity",
            "no BootNotification seen: vendor, model and firmware unknown".into(),
            format!("chargegate action trigger {id} --message BootNotification"),
        )),
    }
    match st.meter.clock_skew_s {
        Some(skew) if skew.abs() > 60 => f.push(problem(
            "clock",
            format!(
                "its clock is {} s {} the gateway's: the cloud will bill with wrong times",
                skew.abs(),
                if skew > 0 { "ahead of" } else { "behind" }
            ),
            "set the charger's time source (NTP) or let the cloud set its time at boot".into(),
        )),
        Some(skew) => f.push(ok(
            "clock",
            format!(
                "its clock is within {} s of the gateway's",
                skew.abs().max(1)
            ),
        )),
        None => f.push(warn(
            "clock",
            "no timestamped meter reading arrived, so its clock could not be compared".into(),
            format!("chargegate action trigger {id} --message MeterValues, then check again"),
        )),
    }
}

/// Faulted connectors, error codes, protocol errors, dead letters.
fn errors(f: &mut Vec<Finding>, g: &Gathered, id: &str, st: &ChargerState) {
    for (n, c) in &st.connectors {
        if c.status == "Faulted" {
            f.push(problem(
                "errors",
                format!("connector {n} is Faulted ({})", c.error_code),
                "see the charger's manual for this error code; reboot it with `chargegate action reboot`".into(),
            ));
        }
    }
    if !g.recent.error_codes.is_empty() {
        let codes: Vec<&str> = g.recent.error_codes.iter().map(String::as_str).collect();
        f.push(warn(
            "errors",
            format!(
                "reported error codes in the last 24 h: {}",
                codes.join(", ")
            ),
            format!("chargegate log --charger {id} --kind StatusNotification"),
        ));
    }
    if g.recent.protocol_errors > 0 {
        f.push(warn(
            "errors",
            format!(
                "{} protocol error(s) in the last 24 h",
                g.recent.protocol_errors
            ),
            format!("chargegate log --charger {id} --kind ProtocolError"),
        ));
    }
    if g.outbox.dead_letters > 0 {
        f.push(problem(
            "errors",
            format!(
                "{} transaction message(s) the cloud refused for good (dead letters)",
                g.outbox.dead_letters
            ),
            format!(
                "chargegate log --charger {id} --kind DeadLetter, and ask the cloud's operator"
            ),
        ));
    }
}

/// HeartbeatInterval, MeterValueSampleInterval, MeterValuesSampledData.
fn intervals_and_samples(f: &mut Vec<Finding>, cfg: &Config, s: &Settings, id: &str) {
    let num = |k: &str| cfg.get(k).and_then(|v| v.trim().parse::<i64>().ok());
    match num("HeartbeatInterval") {
        Some(0) => f.push(warn(
            "heartbeat",
            "HeartbeatInterval is 0: no heartbeats, so a silent charger is noticed only by pings"
                .into(),
            change(id, "HeartbeatInterval", "300"),
        )),
        Some(h) if h > 3600 => f.push(warn(
            "heartbeat",
            format!("HeartbeatInterval is {h} s: the cloud notices a dead charger late"),
            change(id, "HeartbeatInterval", "300"),
        )),
        Some(h) => f.push(ok("heartbeat", format!("HeartbeatInterval {h} s"))),
        None => {}
    }
    let wanted_interval = if s.load_management { 60 } else { 300 };
    match num("MeterValueSampleInterval") {
        Some(0) => f.push(problem(
            "meter values",
            "MeterValueSampleInterval is 0: no meter values during sessions, so neither the cloud nor load management sees consumption".into(),
            change(id, "MeterValueSampleInterval", "60"),
        )),
        Some(i) if i > wanted_interval => f.push(warn(
            "meter values",
            format!(
                "MeterValueSampleInterval is {i} s: {}",
                if s.load_management {
                    "load management sees its draw late"
                } else {
                    "consumption reaches the cloud in coarse steps"
                }
            ),
            change(id, "MeterValueSampleInterval", "60"),
        )),
        Some(i) => f.push(ok("meter values", format!("MeterValueSampleInterval {i} s"))),
        None => {}
    }
    if let Some(data) = cfg.get("MeterValuesSampledData") {
        let mut wanted = vec!["Energy.Active.Import.Register"];
        if !listed(data, "Energy.Active.Import.Register") {
            f.push(problem(
                "meter values",
                "MeterValuesSampledData has no Energy.Active.Import.Register: the cloud cannot bill from its meter values".into(),
                change(id, "MeterValuesSampledData", "Energy.Active.Import.Register,Power.Active.Import,Current.Import"),
            ));
        }
        if s.load_management {
            wanted.push("Current.Import");
            if !listed(data, "Current.Import") {
                f.push(problem(
                    "meter values",
                    "MeterValuesSampledData has no Current.Import: load management cannot see what it draws and undercounts it".into(),
                    change(id, "MeterValuesSampledData", "Energy.Active.Import.Register,Power.Active.Import,Current.Import"),
                ));
            }
        }
        if wanted.iter().all(|w| listed(data, w)) {
            f.push(ok("meter values", format!("samples {data}")));
        }
    }
}

/// Whether it takes the gateway's charging profiles.
fn smart_charging(f: &mut Vec<Finding>, g: &Gathered, cfg: &Config, s: &Settings, id: &str) {
    let num = |k: &str| cfg.get(k).and_then(|v| v.trim().parse::<i64>().ok());
    let smart = s.smart_for(id);
    let flag = |what: String, todo: String| {
        if smart {
            problem("smart charging", what, todo)
        } else {
            warn("smart charging", what, todo)
        }
    };
    match cfg.get("SupportedFeatureProfiles") {
        Some(p) if !listed(p, "SmartCharging") => f.push(flag(
            format!("SupportedFeatureProfiles ({p}) has no SmartCharging: schedules, pauses and load management cannot limit it"),
            "enable smart charging in the charger's settings or firmware, or leave it out of schedules and [load]".into(),
        )),
        _ => {}
    }
    if let Some(level) = num("ChargeProfileMaxStackLevel") {
        if level < s.stack_level as i64 {
            f.push(flag(
                format!("ChargeProfileMaxStackLevel is {level}, below the gateway's stack level {}: it refuses the gateway's profiles", s.stack_level),
                format!("set [smart] stack_level to {} or lower", (level - 1).max(0)),
            ));
        }
    }
    let unit = s.rate_units.get(id).copied().unwrap_or("Current");
    if let Some(units) = cfg.get("ChargingScheduleAllowedChargingRateUnit") {
        if !listed(units, unit) {
            f.push(flag(
                format!("ChargingScheduleAllowedChargingRateUnit is {units}, but the gateway sends its limits in {unit}"),
                format!("set rate_unit for {id} in its [[charger]] section to {}", if unit == "Current" { "W" } else { "A" }),
            ));
        }
    }
    match g.recent.last_profile_answer.as_deref() {
        Some("Accepted") | None => {}
        Some(other) => f.push(flag(
            format!("it answered the gateway's last charging profile with {other}"),
            format!("chargegate log --charger {id} --kind RemoteAction"),
        )),
    }
    match g.recent.paused {
        Some((false, true)) => f.push(flag(
            "a pause was sent (0 A) but it went on Charging and never reported SuspendedEVSE".into(),
            format!("check its smart charging support; or set pause = \"stop\" for {id} in its [[charger]] section"),
        )),
        Some((true, _)) => f.push(ok("smart charging", "a pause reached SuspendedEVSE".into())),
        _ => {}
    }
    if smart
        && !f
            .iter()
            .any(|x| x.topic == "smart charging" && x.severity != Severity::Ok)
    {
        f.push(ok(
            "smart charging",
            format!("takes the gateway's profiles (unit {unit})"),
        ));
    }
}

/// The local list and remote authorization settings, as reported.
fn authorization(f: &mut Vec<Finding>, cfg: &Config) {
    let local_list = cfg
        .get("LocalAuthListEnabled")
        .map(|v| v.eq_ignore_ascii_case("true"));
    let remote_auth = cfg
        .get("AuthorizeRemoteTxRequests")
        .map(|v| v.eq_ignore_ascii_case("true"));
    if local_list.is_some() || remote_auth.is_some() {
        let yn = |b: Option<bool>| match b {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        };
        f.push(ok(
            "authorization",
            format!(
                "local authorization list {}, AuthorizeRemoteTxRequests {}",
                yn(local_list),
                yn(remote_auth)
            ),
        ));
    }
}

/// What the gateway knows about the site as a whole.
#[derive(Debug, Clone, Default)]
pub struct SiteFacts {
    pub cloud_url: Option<String>,
    /// Chargers connected, and how many of those have their cloud link up.
    pub connected: usize,
    pub cloud_up: usize,
    /// `[load]`: fuse and margin (amperes per phase, fraction).
    pub fuse: Option<(f64, f64)>,
    /// Meter: reachable?, its highest phase current, its last error.
    pub meter: Option<MeterFacts>,
    /// What the chargers report drawing together (A per phase).
    pub chargers_drawing_a: f64,
    /// Schedule names with what they allow now and their next change.
    pub schedules: Vec<String>,
    pub journal_records: u64,
    pub journal_bytes: u64,
    pub journal_alarm: Option<String>,
    pub disk_free_bytes: Option<u64>,
    /// Whether the system clock is synchronised (NTP), when known.
    pub clock_synchronised: Option<bool>,
}

/// The site meter as the check sees it.
#[derive(Debug, Clone, Default)]
pub struct MeterFacts {
    pub reachable: bool,
    pub max_phase_a: Option<f64>,
    pub error: Option<String>,
}

/// Judge the site.
pub fn site(x: &SiteFacts) -> Vec<Finding> {
    let mut f = Vec::new();
    match &x.cloud_url {
        Some(url) if x.connected > 0 && x.cloud_up < x.connected => f.push(problem(
            "cloud",
            format!("{} of {} connected chargers have no link to the cloud at {url}", x.connected - x.cloud_up, x.connected),
            "check the internet link and [upstream] in the config; `chargegate log` shows the cloud's answers".into(),
        )),
        Some(url) => f.push(ok("cloud", format!("{url}: every connected charger's link is up"))),
        None => f.push(ok("cloud", "standalone: no cloud configured, the gateway answers the chargers itself".into())),
    }
    load_and_meter(&mut f, x);
    for s in &x.schedules {
        f.push(ok("schedules", s.clone()));
    }
    match &x.journal_alarm {
        Some(a) => f.push(problem(
            "journal",
            format!("the journal cannot write: {a}"),
            "free disk space or replace the storage; see `chargegate status`".into(),
        )),
        None => f.push(ok(
            "journal",
            format!(
                "{} records, {:.1} MB",
                x.journal_records,
                x.journal_bytes as f64 / 1e6
            ),
        )),
    }
    match x.disk_free_bytes {
        Some(b) if b < 200_000_000 => f.push(problem(
            "disk",
            format!("only {:.0} MB free where the journal lives", b as f64 / 1e6),
            "lower [journal] max_size_mb or free space".into(),
        )),
        Some(b) => f.push(ok("disk", format!("{:.1} GB free", b as f64 / 1e9))),
        None => {}
    }
    match x.clock_synchronised {
        Some(true) => f.push(ok(
            "clock",
            "the gateway's clock is synchronised (NTP)".into(),
        )),
        Some(false) => f.push(problem(
            "clock",
            "the gateway's clock is not synchronised: schedules and journal times may be off"
                .into(),
            "enable time sync: `timedatectl set-ntp true`".into(),
        )),
        None => f.push(warn(
            "clock",
            "cannot tell whether the gateway's clock is synchronised".into(),
            "check `timedatectl` (systemd-timesyncd or chrony)".into(),
        )),
    }
    f
}

/// Load management and the site meter it reads.
fn load_and_meter(f: &mut Vec<Finding>, x: &SiteFacts) {
    match (&x.fuse, &x.meter) {
        (Some((fuse, margin)), Some(m)) => {
            f.push(ok("load", format!("fuse {fuse} A per phase, margin {:.0} %", margin * 100.0)));
            if !m.reachable {
                f.push(problem(
                    "meter",
                    format!("the site meter does not answer ({}): every charger is held at the safe current", m.error.as_deref().unwrap_or("no reading")),
                    "check the meter's address, cable and Modbus settings in [meter]".into(),
                ));
            } else if let Some(max) = m.max_phase_a {
                if max + 2.0 < x.chargers_drawing_a {
                    f.push(warn(
                        "meter",
                        format!("the meter reads {max:.1} A on its busiest phase, less than the {:.1} A the chargers report drawing: it may not measure the chargers' feed", x.chargers_drawing_a),
                        "check where the meter's current transformers sit and its register map (model in [meter])".into(),
                    ));
                } else {
                    f.push(ok("meter", format!("reachable, busiest phase {max:.1} A, chargers {:.1} A", x.chargers_drawing_a)));
                }
            }
        }
        (Some((fuse, _)), None) => f.push(problem(
            "meter",
            format!("[load] is set (fuse {fuse} A) but no [meter]: load management cannot see the site's load"),
            "add a [meter] section for the site meter".into(),
        )),
        (None, _) => f.push(ok("load", "load management off (no [load] section)".into())),
    }
}

#[cfg(test)]
#[path = "judge_tests.rs"]
mod tests;
