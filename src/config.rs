//! Configuration: TOML in, a validated `Config` out, before any socket opens.
//! Every problem is reported at once, each naming the file, the key and
//! what was expected, so an installer fixes the file in one go.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use crate::ocpp::local::{AuthPolicy, Policy};

mod mirror;
mod mqtt;
mod smart;
pub use self::mirror::{MirrorConfig, CSMS_CALLS};
pub use self::mqtt::MqttConfig;
pub use self::smart::{ChargerLimits, LoadConfig, PauseMethod, ScheduleConfig, Smart, SmartConfig};

/// The example config, which is also what `chargegate` runs when no config
/// file is given.
pub const EMBEDDED: &str = include_str!("../config/chargegate.toml");
/// Name used for the embedded config in messages.
pub const EMBEDDED_NAME: &str = "(embedded default config)";

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub expected: String,
}

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {}: {}: {}", self.file, p.key, p.expected)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The wss:// listener for Security Profiles 2 and 3.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsListen {
    pub listen: SocketAddr,
    /// The gateway's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that signs the chargers' client certificates (Profile 3).
    pub client_ca: Option<PathBuf>,
}

fn read_tls(o: &Table, r: &mut Reader) -> Option<TlsListen> {
    let listen = r.string(Some(o), "ocpp", "tls_listen", None)?;
    let Ok(listen) = listen.parse() else {
        r.problem(
            "ocpp.tls_listen",
            format!("expected an address like \"0.0.0.0:8443\", found {listen:?}"),
        );
        return None;
    };
    let mut file = |key: &str| {
        let p = r.pem_file(o, "ocpp", key);
        if p.is_none() {
            r.problem(
                &format!("ocpp.{key}"),
                "expected a PEM file: tls_listen needs tls_cert and tls_key",
            );
        }
        p
    };
    let cert = file("tls_cert");
    let key = file("tls_key");
    let client_ca = r.pem_file(o, "ocpp", "client_ca");
    Some(TlsListen {
        listen,
        cert: cert?,
        key: key?,
        client_ca,
    })
}

/// One known charger.
#[derive(Debug, Clone)]
pub struct ChargerConfig {
    pub id: String,
    /// OCPP Security Profile 1 password the charger must present.
    pub password: Option<String>,
    /// Password to present to the cloud instead of passing the charger's on.
    pub upstream_password: Option<String>,
    /// Client certificate and key (PEM) the gateway presents to the cloud
    /// for this charger (clouds on Security Profile 3).
    pub upstream_identity: Option<(PathBuf, PathBuf)>,
    /// OCPP Security Profile: 1 (Basic auth, ws or wss), 2 (wss and Basic
    /// auth), 3 (wss with a client certificate for this id).
    pub profile: u8,
    /// Electrical limits and quirks, for smart charging.
    pub limits: ChargerLimits,
}

/// The cloud side (and, with its own URL, a mirror's link).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Base URL; the charge point id is appended as a path segment.
    pub url: String,
    /// Extra CA certificate (PEM) trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// What the gateway does with a 1.6 charger while its cloud link is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineMode {
    /// Keep it connected, answer it and queue its transaction messages.
    Hold,
    /// Close its connection, so that it queues by itself.
    Disconnect,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway_id: String,
    pub data_dir: PathBuf,
    pub log_level: log::LevelFilter,
    pub listen: SocketAddr,
    pub path_prefix: String,
    pub allow_unknown: bool,
    pub max_message_size: usize,
    pub ping_interval: Duration,
    /// How long a call to a charger (the gateway's or the cloud's) waits
    /// for its answer (`[ocpp] call_timeout_secs`).
    pub call_timeout: Duration,
    /// How long the gateway waits for the cloud's answer to a charger's
    /// call before answering itself (`[upstream] answer_timeout_secs`).
    pub answer_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Open charger connections at most, in total and per source address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Messages a second from one charger (0: no limit), and the burst.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// The wss:// listener (Security Profiles 2 and 3), if configured.
    pub tls: Option<TlsListen>,
    pub policy: Policy,
    /// OCPP 1.6 TransactionMessageAttempts: tries before a dead letter.
    pub tx_attempts: u32,
    /// Transaction messages one charger may have queued for the cloud;
    /// more that the gateway would have to vouch for get a CALLERROR.
    pub max_queued: usize,
    /// OCPP 1.6 TransactionMessageRetryInterval (× attempts so far).
    pub tx_retry_interval: Duration,
    pub offline_mode: OfflineMode,
    /// The same choice for OCPP 2.0.1 chargers (`[offline] mode_ocpp201`):
    /// `disconnect` by default, as 2.0.1 Part 4 §6.3 asks.
    pub offline_mode_201: OfflineMode,
    /// OCPP 1.6 StopTransactionOnInvalidId, applied by the gateway to
    /// transactions it let start offline.
    pub stop_on_invalid_id: bool,
    pub upstream: Option<UpstreamConfig>,
    pub api_listen: SocketAddr,
    pub api_token: Option<String>,
    /// Host names the API answers to besides IP addresses, `localhost`
    /// and this machine's name (DNS rebinding).
    pub api_host_names: Vec<String>,
    /// Id tag for a remote start when none is given.
    pub default_id_tag: String,
    /// Force stop: how long each step waits for the charger's StopTransaction.
    pub force_stop_wait: Duration,
    /// Where chargers upload diagnostics files (GetDiagnostics).
    pub upload_listen: SocketAddr,
    pub upload_max_bytes: usize,
    pub journal_max_age: Duration,
    pub journal_max_bytes: u64,
    /// Relayed history is written at least this often (`commit_interval_secs`).
    pub journal_commit_interval: Duration,
    pub chargers: BTreeMap<String, ChargerConfig>,
    /// Schedules, load management, the meter.
    pub smart: Smart,
    /// The MQTT broker (Home Assistant); none: no MQTT.
    pub mqtt: Option<MqttConfig>,
    /// Second backends (`[[mirror]]`).
    pub mirrors: Vec<MirrorConfig>,
    /// Deprecated keys the file still uses, each with what to write
    /// instead (`file: key: …`): printed by check-config and at start.
    pub warnings: Vec<String>,
}

/// The config in force: replaced on SIGHUP by [`Config::with_live_parts`].
/// New connections, the API and smart charging read it; a running session
/// keeps the config it started with.
#[derive(Clone)]
pub struct Live(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Config>>>);

impl Live {
    pub fn new(cfg: std::sync::Arc<Config>) -> Live {
        Live(std::sync::Arc::new(std::sync::RwLock::new(cfg)))
    }

    /// The config now.
    pub fn get(&self) -> std::sync::Arc<Config> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, cfg: Config) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(cfg);
    }
}

impl Config {
    /// The sections of `new` that differ from `self` and only apply after a
    /// restart (listeners, storage, the cloud, timeouts, the meter).
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let d = |v: &dyn fmt::Debug| format!("{v:?}");
        let mut out = Vec::new();
        let pairs: [(&'static str, String, String); 10] = [
            (
                "[gateway]",
                d(&(&self.gateway_id, &self.data_dir, &self.log_level)),
                d(&(&new.gateway_id, &new.data_dir, &new.log_level)),
            ),
            (
                "[ocpp]",
                d(&(
                    &self.listen,
                    &self.path_prefix,
                    self.max_message_size,
                    self.ping_interval,
                    (self.call_timeout, self.answer_timeout),
                    self.handshake_timeout,
                    (self.max_connections, self.max_connections_per_ip),
                    (self.rate_per_sec, self.rate_burst),
                    &self.tls,
                )),
                d(&(
                    &new.listen,
                    &new.path_prefix,
                    new.max_message_size,
                    new.ping_interval,
                    (new.call_timeout, new.answer_timeout),
                    new.handshake_timeout,
                    (new.max_connections, new.max_connections_per_ip),
                    (new.rate_per_sec, new.rate_burst),
                    &new.tls,
                )),
            ),
            (
                "[offline]",
                d(&(
                    &self.policy,
                    self.tx_attempts,
                    self.max_queued,
                    self.tx_retry_interval,
                    (self.offline_mode, self.offline_mode_201),
                    self.stop_on_invalid_id,
                )),
                d(&(
                    &new.policy,
                    new.tx_attempts,
                    new.max_queued,
                    new.tx_retry_interval,
                    (new.offline_mode, new.offline_mode_201),
                    new.stop_on_invalid_id,
                )),
            ),
            ("[upstream]", d(&self.upstream), d(&new.upstream)),
            ("[[mirror]]", d(&self.mirrors), d(&new.mirrors)),
            (
                "[api]",
                d(&(
                    &self.api_listen,
                    &self.api_token,
                    &self.default_id_tag,
                    self.force_stop_wait,
                )),
                d(&(
                    &new.api_listen,
                    &new.api_token,
                    &new.default_id_tag,
                    new.force_stop_wait,
                )),
            ),
            (
                "[diagnostics]",
                d(&(&self.upload_listen, self.upload_max_bytes)),
                d(&(&new.upload_listen, new.upload_max_bytes)),
            ),
            (
                "[journal]",
                d(&(
                    self.journal_max_age,
                    self.journal_max_bytes,
                    self.journal_commit_interval,
                )),
                d(&(
                    new.journal_max_age,
                    new.journal_max_bytes,
                    new.journal_commit_interval,
                )),
            ),
            ("[meter]", d(&self.smart.meter), d(&new.smart.meter)),
            ("[mqtt]", d(&self.mqtt), d(&new.mqtt)),
        ];
        for (name, a, b) in pairs {
            if a != b {
                out.push(name);
            }
        }
        out
    }

    /// `self` with what applies live taken from `new`: the chargers (ids,
    /// passwords, limits), whether unknown chargers may connect, schedules,
    /// `[site]`, `[smart]` and `[load]`.
    pub fn with_live_parts(&self, new: &Config) -> Config {
        let mut c = self.clone();
        c.chargers = new.chargers.clone();
        c.allow_unknown = new.allow_unknown;
        let meter = c.smart.meter.take();
        c.smart = new.smart.clone();
        c.smart.meter = meter;
        c
    }

    /// The offline mode for chargers speaking `proto`.
    pub fn offline_mode_for(&self, proto: crate::ocpp::Protocol) -> OfflineMode {
        match proto {
            crate::ocpp::Protocol::Ocpp16 => self.offline_mode,
            crate::ocpp::Protocol::Ocpp201 => self.offline_mode_201,
        }
    }

    /// Whether the gateway answers a charger speaking `proto` itself when
    /// it has to (standalone, cloud away or silent): always for 1.6; for
    /// 2.0.1 standalone, and with a cloud only in `hold` mode (else the
    /// charger's calls wait for the cloud, however late).
    pub fn answers_itself(&self, proto: crate::ocpp::Protocol, standalone: bool) -> bool {
        proto == crate::ocpp::Protocol::Ocpp16
            || standalone
            || self.offline_mode_201 == OfflineMode::Hold
    }

    /// A charger's electrical limits (defaults for one not in the config).
    pub fn limits(&self, id: &str) -> ChargerLimits {
        self.chargers
            .get(id)
            .map(|c| c.limits.clone())
            .unwrap_or_default()
    }
}

/// Walks a TOML table, collecting problems instead of stopping at the first.
struct Reader<'a> {
    problems: &'a mut Vec<Problem>,
    /// Deprecated keys still honoured: (key, what to write instead).
    warnings: Vec<Problem>,
}

impl Reader<'_> {
    fn problem(&mut self, key: &str, expected: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            expected: expected.into(),
        });
    }

    fn table<'t>(&mut self, root: &'t Table, key: &str) -> Option<&'t Table> {
        match root.get(key) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(_) => {
                self.problem(key, "expected a table ([section])");
                None
            }
        }
    }

    /// The entries of an array of tables (`[[key]]`) in `parent`, each with
    /// its name for messages (`{section}[0]`, …). Missing: `None`, plus a
    /// problem if `required` says what was expected.
    fn entries<'t>(
        &mut self,
        parent: &'t Table,
        key: &str,
        section: &str,
        required: Option<&str>,
    ) -> Option<Vec<(String, &'t Table)>> {
        let list = match parent.get(key) {
            None => {
                if let Some(what) = required {
                    self.problem(section, what);
                }
                return None;
            }
            Some(Value::Array(a)) if !a.is_empty() || required.is_none() => a,
            Some(_) => {
                let what = required.unwrap_or("expected [[...]] entries");
                self.problem(section, what);
                return None;
            }
        };
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let name = format!("{section}[{i}]");
            match v.as_table() {
                Some(t) => out.push((name, t)),
                None => self.problem(&name, "expected a table"),
            }
        }
        Some(out)
    }

    /// An optional PEM file (`ca_file` keys): must exist when given.
    fn pem_file(&mut self, t: &Table, section: &str, key: &str) -> Option<PathBuf> {
        let path = self
            .string(Some(t), section, key, None)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)?;
        if !path.is_file() {
            self.problem(
                &format!("{section}.{key}"),
                format!(
                    "expected a readable PEM file, {} does not exist",
                    path.display()
                ),
            );
        }
        Some(path)
    }

    /// A key that moved from `[old]` to `[new]`: where to read it (the new
    /// place wins), with a warning when only the old one is used.
    fn moved<'t>(
        &mut self,
        old: Option<&'t Table>,
        new: Option<&'t Table>,
        old_section: &'static str,
        new_section: &'static str,
        key: &str,
    ) -> (&'static str, Option<&'t Table>) {
        let in_old = old.is_some_and(|t| t.contains_key(key));
        let in_new = new.is_some_and(|t| t.contains_key(key));
        if in_old {
            self.warnings.push(Problem {
                key: format!("{old_section}.{key}"),
                expected: if in_new {
                    format!("deprecated and ignored: [{new_section}] {key} is used")
                } else {
                    format!("deprecated: move it to [{new_section}] {key}")
                },
            });
        }
        if in_old && !in_new {
            (old_section, old)
        } else {
            (new_section, new)
        }
    }

    fn unknown_keys(&mut self, t: &Table, section: &str, known: &[&str]) {
        for k in t.keys() {
            if !known.contains(&k.as_str()) {
                let full = if section.is_empty() {
                    k.clone()
                } else {
                    format!("{section}.{k}")
                };
                self.problem(
                    &full,
                    format!("unknown key (known keys here: {})", known.join(", ")),
                );
            }
        }
    }

    fn string(
        &mut self,
        t: Option<&Table>,
        section: &str,
        key: &str,
        default: Option<&str>,
    ) -> Option<String> {
        match t.and_then(|t| t.get(key)) {
            None => default.map(str::to_string),
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(
                    &format!("{section}.{key}"),
                    format!("expected a string, found {}", other.type_str()),
                );
                default.map(str::to_string)
            }
        }
    }

    fn int(
        &mut self,
        t: Option<&Table>,
        section: &str,
        key: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> i64 {
        match t.and_then(|t| t.get(key)) {
            None => default,
            Some(Value::Integer(i)) if (min..=max).contains(i) => *i,
            Some(v) => {
                self.problem(
                    &format!("{section}.{key}"),
                    format!("expected an integer from {min} to {max}, found {v}"),
                );
                default
            }
        }
    }

    fn boolean(&mut self, t: Option<&Table>, section: &str, key: &str, default: bool) -> bool {
        match t.and_then(|t| t.get(key)) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(v) => {
                self.problem(
                    &format!("{section}.{key}"),
                    format!("expected true or false, found {v}"),
                );
                default
            }
        }
    }

    fn addr(&mut self, t: Option<&Table>, section: &str, key: &str, default: &str) -> SocketAddr {
        let s = self
            .string(t, section, key, Some(default))
            .unwrap_or_default();
        s.parse().unwrap_or_else(|_| {
            self.problem(
                &format!("{section}.{key}"),
                format!("expected an address like \"0.0.0.0:8887\", found {s:?}"),
            );
            default.parse().expect("default address is valid")
        })
    }
}

const TOP: &[&str] = &[
    "gateway",
    "ocpp",
    "offline",
    "upstream",
    "api",
    "journal",
    "diagnostics",
    "charger",
    "site",
    "smart",
    "load",
    "meter",
    "schedule",
    "mqtt",
    "mirror",
    "actions",
];

impl Config {
    /// Parse and validate a config file's text. `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let root: Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            file: file.to_string(),
            problems: vec![Problem {
                key: "(syntax)".into(),
                expected: e.to_string().trim().replace('\n', " "),
            }],
        })?;
        let mut problems = Vec::new();
        let mut r = Reader {
            problems: &mut problems,
            warnings: Vec::new(),
        };
        let mut cfg = Self::read(&root, &mut r);
        cfg.warnings = r
            .warnings
            .into_iter()
            .map(|w| format!("{file}: {}: {}", w.key, w.expected))
            .collect();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError {
                file: file.to_string(),
                problems,
            })
        }
    }

    /// Read a config file from disk.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem {
                key: "(file)".into(),
                expected: format!("a readable file: {e}"),
            }],
        })?;
        Self::parse(&text, &file)
    }

    /// The embedded default config.
    pub fn embedded() -> Config {
        Self::parse(EMBEDDED, EMBEDDED_NAME)
            .expect("the embedded config is valid (a unit test checks it)")
    }

    fn read(root: &Table, r: &mut Reader) -> Config {
        r.unknown_keys(root, "", TOP);
        let g = r.table(root, "gateway");
        if let Some(g) = g {
            r.unknown_keys(g, "gateway", &["id", "data_dir", "log_level"]);
        }
        let gateway_id = r
            .string(g, "gateway", "id", Some("chargegate"))
            .unwrap_or_default();
        // Under systemd, StateDirectory= (/var/lib/chargegate) is the
        // default; elsewhere a folder next to where it runs.
        let state_dir = std::env::var("STATE_DIRECTORY")
            .ok()
            .and_then(|s| s.split(':').next().map(str::to_string))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "./chargegate-data".into());
        let data_dir = PathBuf::from(
            r.string(g, "gateway", "data_dir", Some(&state_dir))
                .unwrap_or_default(),
        );
        let level = r
            .string(g, "gateway", "log_level", Some("info"))
            .unwrap_or_default();
        let log_level = level.parse().unwrap_or_else(|_| {
            r.problem(
                "gateway.log_level",
                format!("expected one of off, error, warn, info, debug, trace; found {level:?}"),
            );
            log::LevelFilter::Info
        });

        let o = r.table(root, "ocpp");
        if let Some(o) = o {
            r.unknown_keys(
                o,
                "ocpp",
                &[
                    "listen",
                    "path_prefix",
                    "allow_unknown_chargers",
                    "max_message_size",
                    "ping_interval_secs",
                    "call_timeout_secs",
                    "handshake_timeout_secs",
                    "heartbeat_interval_secs",
                    "max_connections",
                    "max_connections_per_ip",
                    "rate_limit_per_sec",
                    "rate_limit_burst",
                    "tls_listen",
                    "tls_cert",
                    "tls_key",
                    "client_ca",
                ],
            );
        }
        let listen = r.addr(o, "ocpp", "listen", "127.0.0.1:8887");
        let mut path_prefix = r
            .string(o, "ocpp", "path_prefix", Some("/ocpp"))
            .unwrap_or_default();
        if !path_prefix.starts_with('/') {
            r.problem(
                "ocpp.path_prefix",
                format!("expected a path starting with '/', found {path_prefix:?}"),
            );
        }
        while path_prefix.ends_with('/') {
            path_prefix.pop();
        }
        let allow_unknown = r.boolean(o, "ocpp", "allow_unknown_chargers", false);
        let max_message_size =
            r.int(o, "ocpp", "max_message_size", 65_536, 1024, 16 << 20) as usize;
        let ping_interval =
            Duration::from_secs(r.int(o, "ocpp", "ping_interval_secs", 60, 0, 86_400) as u64);
        let call_timeout =
            Duration::from_secs(r.int(o, "ocpp", "call_timeout_secs", 30, 1, 3600) as u64);
        let handshake_timeout =
            Duration::from_secs(r.int(o, "ocpp", "handshake_timeout_secs", 10, 1, 300) as u64);
        let heartbeat_interval = r.int(o, "ocpp", "heartbeat_interval_secs", 300, 1, 86_400) as u32;
        // 0 turns a limit off.
        let unlimited = |n: i64| if n == 0 { usize::MAX } else { n as usize };
        let max_connections = unlimited(r.int(o, "ocpp", "max_connections", 4096, 0, 1_000_000));
        let max_connections_per_ip =
            unlimited(r.int(o, "ocpp", "max_connections_per_ip", 64, 0, 1_000_000));
        let rate_per_sec = r.int(o, "ocpp", "rate_limit_per_sec", 100, 0, 1_000_000) as u32;
        let rate_burst = r.int(o, "ocpp", "rate_limit_burst", 500, 1, 1_000_000) as u32;
        let tls = o.and_then(|o| read_tls(o, r));

        let off = r.table(root, "offline");
        if let Some(t) = off {
            r.unknown_keys(
                t,
                "offline",
                &[
                    "authorize",
                    "id_tags",
                    "transaction_message_attempts",
                    "transaction_message_retry_interval_secs",
                    "mode",
                    "mode_ocpp201",
                    "stop_transaction_on_invalid_id",
                    "max_queued_messages",
                ],
            );
        }
        let auth = r
            .string(off, "offline", "authorize", Some("local_list"))
            .unwrap_or_default();
        let authorize = match auth.as_str() {
            "accept_all" => AuthPolicy::AcceptAll,
            "local_list" => AuthPolicy::LocalList,
            "reject_unknown" => AuthPolicy::RejectUnknown,
            other => {
                r.problem("offline.authorize", format!("expected \"accept_all\", \"local_list\" or \"reject_unknown\", found {other:?}"));
                AuthPolicy::LocalList
            }
        };
        let mut id_tags = HashMap::new();
        match off.and_then(|t| t.get("id_tags")) {
            None => {}
            Some(Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    match v.as_str() {
                        Some(s) if !s.is_empty() && s.len() <= 20 => {
                            id_tags.insert(s.to_string(), "Accepted".to_string());
                        }
                        _ => r.problem(
                            &format!("offline.id_tags[{i}]"),
                            "expected an id tag of 1 to 20 characters",
                        ),
                    }
                }
            }
            Some(_) => r.problem(
                "offline.id_tags",
                "expected a list of id tags, e.g. [\"04A2B3C4\"]",
            ),
        }
        let tx_attempts = r.int(off, "offline", "transaction_message_attempts", 3, 1, 100) as u32;
        let max_queued = r.int(
            off,
            "offline",
            "max_queued_messages",
            20_000,
            10,
            10_000_000,
        ) as usize;
        let tx_retry_interval = Duration::from_secs(r.int(
            off,
            "offline",
            "transaction_message_retry_interval_secs",
            10,
            0,
            86_400,
        ) as u64);
        let offline_mode = read_offline_mode(r, off, "mode", "hold");
        let offline_mode_201 = read_offline_mode(r, off, "mode_ocpp201", "disconnect");
        let stop_on_invalid_id = r.boolean(off, "offline", "stop_transaction_on_invalid_id", true);
        let policy = Policy {
            authorize,
            id_tags,
            heartbeat_interval,
        };

        let upstream = r.table(root, "upstream").and_then(|u| read_upstream(u, r));
        let mirrors = mirror::read(root, r, upstream.as_ref().map(|u| u.url.as_str()));
        // How long the cloud may take before the gateway answers a charger
        // itself. Before it had a key of its own, `[ocpp] call_timeout_secs`
        // set it too: a file that sets only that keeps its meaning.
        let up = r.table(root, "upstream");
        let answer_timeout = match (
            up.is_some_and(|u| u.contains_key("answer_timeout_secs")),
            o.is_some_and(|t| t.contains_key("call_timeout_secs")) && upstream.is_some(),
        ) {
            (true, _) => {
                Duration::from_secs(r.int(up, "upstream", "answer_timeout_secs", 30, 1, 3600) as u64)
            }
            (false, true) => {
                r.warnings.push(Problem {
                    key: "ocpp.call_timeout_secs".into(),
                    expected: "also sets how long the gateway waits for the cloud before answering a charger itself; set that as [upstream] answer_timeout_secs".into(),
                });
                call_timeout
            }
            (false, false) => Duration::from_secs(30),
        };

        let a = r.table(root, "api");
        if let Some(t) = a {
            r.unknown_keys(
                t,
                "api",
                &[
                    "listen",
                    "token",
                    "default_id_tag",
                    "force_stop_wait_secs",
                    "host_names",
                ],
            );
        }
        let api_listen = r.addr(a, "api", "listen", "127.0.0.1:8180");
        let api_token = r.string(a, "api", "token", None).filter(|t| !t.is_empty());
        let api_host_names = match a.and_then(|t| t.get("host_names")) {
            None => Vec::new(),
            Some(Value::Array(v))
                if v.iter()
                    .all(|h| h.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 253)) =>
            {
                v.iter()
                    .filter_map(|h| h.as_str().map(str::to_ascii_lowercase))
                    .collect()
            }
            Some(_) => {
                r.problem(
                    "api.host_names",
                    "expected a list of the host names people reach the API by, e.g. [\"gateway.site.example\"]",
                );
                Vec::new()
            }
        };
        // What staff's actions use, from the CLI, the API, the web page
        // and MQTT alike: `[actions]` (formerly in `[api]`).
        let act = r.table(root, "actions");
        if let Some(t) = act {
            r.unknown_keys(t, "actions", &["default_id_tag", "force_stop_wait_secs"]);
        }
        let (tag_section, tag_table) = r.moved(a, act, "api", "actions", "default_id_tag");
        let default_id_tag = r
            .string(tag_table, tag_section, "default_id_tag", Some("CHARGEGATE"))
            .unwrap_or_default();
        let (wait_section, wait_table) = r.moved(a, act, "api", "actions", "force_stop_wait_secs");
        let force_stop_wait = Duration::from_secs(r.int(
            wait_table,
            wait_section,
            "force_stop_wait_secs",
            30,
            1,
            3600,
        ) as u64);
        if default_id_tag.is_empty() || default_id_tag.len() > 20 {
            r.problem(
                &format!("{tag_section}.default_id_tag"),
                "expected an id tag of 1 to 20 characters",
            );
        }
        if !api_listen.ip().is_loopback() && api_token.is_none() {
            r.problem(
                "api.token",
                format!("expected a token: the API listens on {api_listen}, which is not loopback"),
            );
        }

        let j = r.table(root, "journal");
        if let Some(t) = j {
            r.unknown_keys(
                t,
                "journal",
                &["max_age_days", "max_size_mb", "commit_interval_secs"],
            );
        }
        let journal_max_age =
            Duration::from_secs(r.int(j, "journal", "max_age_days", 90, 1, 3650) as u64 * 86_400);
        let journal_max_bytes =
            r.int(j, "journal", "max_size_mb", 256, 1, 1 << 20) as u64 * 1024 * 1024;
        let journal_commit_interval =
            Duration::from_secs(r.int(j, "journal", "commit_interval_secs", 5, 0, 60) as u64);

        let d = r.table(root, "diagnostics");
        if let Some(t) = d {
            r.unknown_keys(t, "diagnostics", &["listen", "max_size_mb"]);
        }
        // By default next to the OCPP port, on the same address.
        let default_upload = SocketAddr::new(
            listen.ip(),
            if listen.port() == 0 {
                0
            } else {
                listen.port().saturating_add(1)
            },
        )
        .to_string();
        let upload_listen = r.addr(d, "diagnostics", "listen", &default_upload);
        let upload_max_bytes =
            r.int(d, "diagnostics", "max_size_mb", 20, 1, 1024) as usize * 1024 * 1024;
        let chargers = read_chargers(root, r, tls.as_ref());
        let smart = smart::read(root, r);
        let mqtt = r
            .table(root, "mqtt")
            .and_then(|m| mqtt::read(m, &gateway_id, r));
        for (i, s) in smart.schedules.iter().enumerate() {
            for c in &s.chargers {
                if c != "*" && !chargers.contains_key(c) && !allow_unknown {
                    r.problem(
                        &format!("schedule[{i}].chargers"),
                        format!("expected ids of [[charger]] entries (or \"*\"); {c:?} is not one"),
                    );
                }
            }
        }
        Config {
            gateway_id,
            data_dir,
            log_level,
            listen,
            path_prefix,
            allow_unknown,
            max_message_size,
            ping_interval,
            call_timeout,
            answer_timeout,
            handshake_timeout,
            max_connections,
            max_connections_per_ip,
            rate_per_sec,
            rate_burst,
            tls,
            policy,
            tx_attempts,
            max_queued,
            tx_retry_interval,
            offline_mode,
            offline_mode_201,
            stop_on_invalid_id,
            upstream,
            api_listen,
            api_token,
            api_host_names,
            default_id_tag,
            force_stop_wait,
            upload_listen,
            upload_max_bytes,
            journal_max_age,
            journal_max_bytes,
            journal_commit_interval,
            chargers,
            smart,
            mqtt,
            mirrors,
            warnings: Vec::new(),
        }
    }
}

/// `[offline] {key}`: `hold` or `disconnect`.
fn read_offline_mode(r: &mut Reader, off: Option<&Table>, key: &str, default: &str) -> OfflineMode {
    let mode = r
        .string(off, "offline", key, Some(default))
        .unwrap_or_default();
    match mode.as_str() {
        "hold" => OfflineMode::Hold,
        "disconnect" => OfflineMode::Disconnect,
        other => {
            r.problem(
                &format!("offline.{key}"),
                format!("expected \"hold\" or \"disconnect\", found {other:?}"),
            );
            if default == "hold" {
                OfflineMode::Hold
            } else {
                OfflineMode::Disconnect
            }
        }
    }
}

/// What is wrong with a cloud URL, said precisely (the charger id is
/// appended to it as a path segment).
pub fn check_ws_url(s: &str) -> Result<(), BadUrl> {
    use tokio_tungstenite::tungstenite::http::Uri;
    match s.split_once("://") {
        None => return Err(BadUrl::NoScheme),
        Some((_, "")) => return Err(BadUrl::NoHost),
        Some(_) => {}
    }
    let uri: Uri = s.parse().map_err(BadUrl::Invalid)?;
    match uri.scheme_str() {
        Some("ws") | Some("wss") => {}
        Some(other) => return Err(BadUrl::Scheme(other.to_string())),
        None => return Err(BadUrl::NoScheme),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(BadUrl::NoHost);
    }
    if uri.query().is_some() || s.contains('#') {
        return Err(BadUrl::QueryOrFragment);
    }
    Ok(())
}

/// What is wrong with a cloud URL.
#[derive(Debug, thiserror::Error)]
pub enum BadUrl {
    #[error("expected ws:// or wss:// at the start")]
    NoScheme,
    #[error("no host after ws:// or wss://")]
    NoHost,
    #[error("not a valid URL ({0})")]
    Invalid(tokio_tungstenite::tungstenite::http::uri::InvalidUri),
    #[error("expected ws:// or wss://, not {0}://")]
    Scheme(String),
    #[error("a query or fragment cannot be followed by the charger id")]
    QueryOrFragment,
}

fn read_upstream(u: &Table, r: &mut Reader) -> Option<UpstreamConfig> {
    r.unknown_keys(
        u,
        "upstream",
        &[
            "url",
            "ca_file",
            "connect_timeout_secs",
            "backoff_min_secs",
            "backoff_max_secs",
            "answer_timeout_secs",
        ],
    );
    let url = r.string(Some(u), "upstream", "url", None);
    let url = match url {
        None => {
            r.problem("upstream.url", "expected the cloud's OCPP URL, e.g. \"wss://csms.example.com/ocpp\" (or remove [upstream] to run standalone)");
            return None;
        }
        Some(s) => match check_ws_url(&s) {
            Ok(()) => s.trim_end_matches('/').to_string(),
            Err(why) => {
                r.problem("upstream.url", format!("{why}, found {s:?}"));
                return None;
            }
        },
    };
    let ca_file = r.pem_file(u, "upstream", "ca_file");
    let connect_timeout =
        Duration::from_secs(r.int(Some(u), "upstream", "connect_timeout_secs", 10, 1, 300) as u64);
    let backoff_min = Duration::from_millis(
        (r.int(Some(u), "upstream", "backoff_min_secs", 1, 0, 3600) * 1000).max(100) as u64,
    );
    let backoff_max =
        Duration::from_secs(r.int(Some(u), "upstream", "backoff_max_secs", 60, 1, 86_400) as u64);
    Some(UpstreamConfig {
        url,
        ca_file,
        connect_timeout,
        backoff_min,
        backoff_max,
    })
}

fn read_chargers(
    root: &Table,
    r: &mut Reader,
    tls: Option<&TlsListen>,
) -> BTreeMap<String, ChargerConfig> {
    let mut chargers = BTreeMap::new();
    let list = r
        .entries(root, "charger", "charger", None)
        .unwrap_or_default();
    for (section, t) in list {
        let mut known = vec![
            "id",
            "password",
            "upstream_password",
            "security_profile",
            "upstream_cert",
            "upstream_key",
        ];
        known.extend_from_slice(smart::CHARGER_KEYS);
        r.unknown_keys(t, &section, &known);
        let Some(id) = r.string(Some(t), &section, "id", None) else {
            r.problem(
                &format!("{section}.id"),
                "expected the charge point id, e.g. \"CP-0001\"",
            );
            continue;
        };
        if let Err(why) = check_charger_id(&id) {
            r.problem(&format!("{section}.id"), why.to_string());
        }
        let password = r
            .string(Some(t), &section, "password", None)
            .filter(|p| !p.is_empty());
        if let Some(p) = &password {
            if p.starts_with(crate::password::HASH_PREFIX) {
                if crate::password::parse_hash(p).is_none() {
                    r.problem(
                        &format!("{section}.password"),
                        "expected a hash as `chargegate hash-password` prints it",
                    );
                }
            } else if let Err(why) = crate::password::check_strength(p) {
                r.problem(&format!("{section}.password"), why.to_string());
            }
        }
        let profile = r.int(Some(t), &section, "security_profile", 1, 1, 3) as u8;
        let key = format!("{section}.security_profile");
        if profile >= 2 && tls.is_none() {
            r.problem(&key, format!("profile {profile} needs the wss:// listener: set [ocpp] tls_listen, tls_cert and tls_key"));
        }
        if profile == 3 && tls.is_some_and(|t| t.client_ca.is_none()) {
            r.problem(
                &key,
                "profile 3 needs [ocpp] client_ca, the CA of the chargers' certificates",
            );
        }
        if profile == 2 && password.is_none() {
            r.problem(&key, "profile 2 needs a password");
        }
        let upstream_password = r
            .string(Some(t), &section, "upstream_password", None)
            .filter(|p| !p.is_empty());
        let upstream_cert = r.pem_file(t, &section, "upstream_cert");
        let upstream_key = r.pem_file(t, &section, "upstream_key");
        let upstream_identity = match (upstream_cert, upstream_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                r.problem(
                    &format!("{section}.upstream_cert"),
                    "expected upstream_cert and upstream_key together (the client certificate this charger presents to the cloud)",
                );
                None
            }
        };
        let limits = smart::read_charger_limits(t, &section, r);
        if chargers
            .insert(
                id.clone(),
                ChargerConfig {
                    id: id.clone(),
                    password,
                    upstream_password,
                    upstream_identity,
                    profile,
                    limits,
                },
            )
            .is_some()
        {
            r.problem(
                &format!("{section}.id"),
                format!("expected a unique id; {id:?} appears twice"),
            );
        }
    }
    chargers
}

/// Charge point ids: 1–48 printable characters without '/' (OCPP 2.0.1's
/// identity string; also covers 1.6's chargeBoxIdentity).
/// Unicode format characters (category Cf) that can hide in an id: zero
/// widths, joiners, bidirectional marks and overrides, the BOM, soft hyphen.
fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}')
}

pub fn check_charger_id(id: &str) -> Result<(), BadChargerId> {
    let bad = |why| {
        Err(BadChargerId {
            id: id.to_string(),
            why,
        })
    };
    if id.is_empty() || id.len() > 48 {
        return bad(IdProblem::Length(id.len()));
    }
    if id
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control() || c.is_whitespace())
    {
        return bad(IdProblem::Separator);
    }
    if id == "." || id == ".." {
        // They name directories: the diagnostics folder, the cloud's URL.
        return bad(IdProblem::Dots);
    }
    if id.chars().any(is_format_char) {
        return bad(IdProblem::Invisible);
    }
    Ok(())
}

/// A charge point id the gateway refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why} {id:?}")]
pub struct BadChargerId {
    pub id: String,
    pub why: IdProblem,
}

/// What is wrong with a charge point id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdProblem {
    #[error("expected 1 to 48 characters, found {0} in")]
    Length(usize),
    #[error("expected no '/', '\\', spaces or control characters in")]
    Separator,
    #[error("expected a name, not")]
    Dots,
    #[error(
        "expected no invisible or direction-changing characters (they make look-alike ids) in"
    )]
    Invisible,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_is_valid_and_standalone() {
        let c = Config::embedded();
        assert!(c.upstream.is_none());
        use crate::ocpp::Protocol::*;
        assert_eq!(
            (c.offline_mode_for(Ocpp16), c.offline_mode_for(Ocpp201)),
            (OfflineMode::Hold, OfflineMode::Disconnect),
            "2.0.1's default is what its Part 4 §6.3 asks"
        );
        assert!(c.api_listen.ip().is_loopback());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            bogus = 1
            [ocpp]
            listen = "nowhere"
            max_message_size = 5
            [offline]
            authorize = "maybe"
            mode_ocpp201 = "keep"
            [upstream]
            url = "http://cloud"
            [api]
            listen = "0.0.0.0:8180"
            [[charger]]
            id = "CP/1"
            [[charger]]
            password = "x"
        "#;
        let e = Config::parse(text, "site.toml").unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "bogus",
            "ocpp.listen",
            "ocpp.max_message_size",
            "offline.authorize",
            "offline.mode_ocpp201",
            "upstream.url",
            "api.token",
            "charger[0].id",
            "charger[1].id",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        let shown = e.to_string();
        assert!(
            shown.contains("site.toml: ocpp.listen: expected an address"),
            "{shown}"
        );
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let e = Config::parse("[ocpp\nlisten=", "bad.toml").unwrap_err();
        assert_eq!(e.file, "bad.toml");
        assert_eq!(e.problems[0].key, "(syntax)");
    }

    #[test]
    fn chargers_and_upstream_are_read() {
        let c = Config::parse(
            r#"
            [upstream]
            url = "wss://csms.example.com/ocpp/"
            [[charger]]
            id = "CP-1"
            password = "0123456789abcdef"
            "#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.upstream.unwrap().url, "wss://csms.example.com/ocpp");
        assert_eq!(
            c.chargers["CP-1"].password.as_deref(),
            Some("0123456789abcdef")
        );
        assert!(!c.allow_unknown);
    }
}

#[cfg(test)]
mod example_defaults {
    use super::*;

    /// Every key the example config (the embedded default) sets to
    /// something other than the code's default says so in the comment
    /// just above it ("Default: …"), so the example and the code cannot
    /// silently disagree.
    #[test]
    fn the_example_names_every_value_that_differs_from_the_default() {
        let text = include_str!("../config/chargegate.toml");
        let full = format!("{:?}", Config::parse(text, "example").expect("valid"));
        let lines: Vec<&str> = text.lines().collect();
        let mut undocumented = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let l = line.trim();
            if l.starts_with('#') || l.starts_with('[') || !l.contains('=') {
                continue;
            }
            let without: String = lines
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, l)| format!("{l}\n"))
                .collect();
            let Ok(c) = Config::parse(&without, "example") else {
                continue; // a required key: no default to differ from
            };
            if format!("{c:?}") == full {
                continue;
            }
            let comment: String = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with('#'))
                .map(|l| l.to_string())
                .collect();
            if !comment.contains("Default:") {
                undocumented.push(l.to_string());
            }
        }
        assert!(
            undocumented.is_empty(),
            "differs from the code's default without saying so: {undocumented:#?}"
        );
    }
}

#[cfg(test)]
mod moved_keys {
    use super::*;

    #[test]
    fn one_key_per_meaning_and_old_keys_still_work_with_a_warning() {
        let new = "[upstream]\nurl = \"ws://c\"\nanswer_timeout_secs = 7\n[ocpp]\ncall_timeout_secs = 12\n[actions]\ndefault_id_tag = \"STAFF\"\nforce_stop_wait_secs = 9\n";
        let c = Config::parse(new, "t.toml").unwrap();
        assert_eq!(
            (c.answer_timeout.as_secs(), c.call_timeout.as_secs()),
            (7, 12)
        );
        assert_eq!(
            (c.default_id_tag.as_str(), c.force_stop_wait.as_secs()),
            ("STAFF", 9)
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let old = "[upstream]\nurl = \"ws://c\"\n[ocpp]\ncall_timeout_secs = 12\n[api]\ndefault_id_tag = \"OLD\"\nforce_stop_wait_secs = 8\n";
        let c = Config::parse(old, "t.toml").unwrap();
        assert_eq!(
            (c.answer_timeout.as_secs(), c.call_timeout.as_secs()),
            (12, 12),
            "the old meaning kept"
        );
        assert_eq!(
            (c.default_id_tag.as_str(), c.force_stop_wait.as_secs()),
            ("OLD", 8)
        );
        let w = c.warnings.join("\n");
        for key in [
            "t.toml: ocpp.call_timeout_secs:",
            "t.toml: api.default_id_tag: deprecated: move it to [actions]",
            "t.toml: api.force_stop_wait_secs:",
        ] {
            assert!(w.contains(key), "{key} not in {w}");
        }
        // Both: the new place wins, the old is said to be ignored.
        let both = "[api]\ndefault_id_tag = \"OLD\"\n[actions]\ndefault_id_tag = \"NEW\"\n";
        let c = Config::parse(both, "t.toml").unwrap();
        assert_eq!(c.default_id_tag, "NEW");
        assert!(c.warnings[0].contains("ignored"), "{:?}", c.warnings);
        // Standalone, call_timeout_secs has one meaning: no warning.
        let alone = Config::parse("[ocpp]\ncall_timeout_secs = 5\n", "t").unwrap();
        assert!(alone.warnings.is_empty());
    }
}
