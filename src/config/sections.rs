//! The plain sections of the config file, one struct each (`[gateway]`,
//! `[ocpp]`, `[offline]`, `[api]`, `[actions]`, `[diagnostics]`,
//! `[journal]`), each deriving `PartialEq` so that what changed on SIGHUP
//! is a comparison, and each read by one function that names its keys
//! once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::{Problem, Reader};
use crate::ocpp::local::{AuthPolicy, Policy};

/// `[gateway]`
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySection {
    /// The gateway's name (MQTT topics, the site check).
    pub id: String,
    pub data_dir: PathBuf,
    pub log_level: log::LevelFilter,
}

pub(super) fn read_gateway(root: &Table, r: &mut Reader) -> GatewaySection {
    let g = r.table(root, "gateway");
    if let Some(g) = g {
        r.unknown_keys(g, "gateway", &["id", "data_dir", "log_level"]);
    }
    let id = r
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
    GatewaySection {
        id,
        data_dir,
        log_level,
    }
}

/// `[ocpp]`: the chargers' side.
#[derive(Debug, Clone, PartialEq)]
pub struct OcppSection {
    pub listen: SocketAddr,
    pub path_prefix: String,
    /// Chargers not in `[[charger]]` may connect (applies on SIGHUP).
    pub allow_unknown: bool,
    pub max_message_size: usize,
    pub ping_interval: Duration,
    /// How long a call to a charger (the gateway's or the cloud's) waits
    /// for its answer (`call_timeout_secs`).
    pub call_timeout: Duration,
    /// How long the gateway waits for the cloud's answer to a charger's
    /// call before answering itself. Its key is `[upstream]
    /// answer_timeout_secs`; it lives here because `call_timeout_secs` set
    /// it before it had one (see [`read_answer_timeout`]).
    pub answer_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Open charger connections at most, in total and per source address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Messages a second from one charger (0: no limit), and the burst.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// The heartbeat interval handed to chargers the gateway answers.
    pub heartbeat_interval: u32,
    /// The wss:// listener (Security Profiles 2 and 3), if configured.
    pub tls: Option<TlsListen>,
}

const OCPP_KEYS: &[&str] = &[
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
];

pub(super) fn read_ocpp(root: &Table, r: &mut Reader, has_upstream: bool) -> OcppSection {
    let o = r.table(root, "ocpp");
    if let Some(o) = o {
        r.unknown_keys(o, "ocpp", OCPP_KEYS);
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
    let call_timeout = r.secs(o, "ocpp", "call_timeout_secs", 30, 1, 3600);
    // 0 turns a limit off.
    let unlimited = |n: i64| if n == 0 { usize::MAX } else { n as usize };
    OcppSection {
        listen,
        path_prefix,
        allow_unknown: r.boolean(o, "ocpp", "allow_unknown_chargers", false),
        max_message_size: r.int(o, "ocpp", "max_message_size", 65_536, 1024, 16 << 20) as usize,
        ping_interval: r.secs(o, "ocpp", "ping_interval_secs", 60, 0, 86_400),
        call_timeout,
        answer_timeout: read_answer_timeout(root, r, call_timeout, has_upstream),
        handshake_timeout: r.secs(o, "ocpp", "handshake_timeout_secs", 10, 1, 300),
        max_connections: unlimited(r.int(o, "ocpp", "max_connections", 4096, 0, 1_000_000)),
        max_connections_per_ip: unlimited(r.int(
            o,
            "ocpp",
            "max_connections_per_ip",
            64,
            0,
            1_000_000,
        )),
        rate_per_sec: r.int(o, "ocpp", "rate_limit_per_sec", 100, 0, 1_000_000) as u32,
        rate_burst: r.int(o, "ocpp", "rate_limit_burst", 500, 1, 1_000_000) as u32,
        heartbeat_interval: r.int(o, "ocpp", "heartbeat_interval_secs", 300, 1, 86_400) as u32,
        tls: o.and_then(|o| read_tls(o, r)),
    }
}

/// How long the cloud may take before the gateway answers a charger
/// itself. Before it had a key of its own, `[ocpp] call_timeout_secs` set
/// it too: a file that sets only that keeps its meaning.
fn read_answer_timeout(
    root: &Table,
    r: &mut Reader,
    call_timeout: Duration,
    has_upstream: bool,
) -> Duration {
    let up = root.get("upstream").and_then(Value::as_table);
    let o = root.get("ocpp").and_then(Value::as_table);
    match (
        up.is_some_and(|u| u.contains_key("answer_timeout_secs")),
        o.is_some_and(|t| t.contains_key("call_timeout_secs")) && has_upstream,
    ) {
        (true, _) => r.secs(up, "upstream", "answer_timeout_secs", 30, 1, 3600),
        (false, true) => {
            r.warnings.push(Problem {
                key: "ocpp.call_timeout_secs".into(),
                expected: "also sets how long the gateway waits for the cloud before answering a charger itself; set that as [upstream] answer_timeout_secs".into(),
            });
            call_timeout
        }
        (false, false) => Duration::from_secs(30),
    }
}

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

/// What the gateway does with a charger while its cloud link is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineMode {
    /// Keep it connected, answer it and queue its transaction messages.
    Hold,
    /// Close its connection, so that it queues by itself.
    Disconnect,
}

/// `[offline]`: what the gateway does while it answers for the cloud.
#[derive(Debug, Clone, PartialEq)]
pub struct OfflineSection {
    pub policy: Policy,
    /// OCPP 1.6 TransactionMessageAttempts: tries before a dead letter.
    pub tx_attempts: u32,
    /// Transaction messages one charger may have queued for the cloud;
    /// more that the gateway would have to vouch for get a CALLERROR.
    pub max_queued: usize,
    /// OCPP 1.6 TransactionMessageRetryInterval (× attempts so far).
    pub tx_retry_interval: Duration,
    /// `mode`: for OCPP 1.6 chargers.
    pub mode: OfflineMode,
    /// `mode_ocpp201`: the same choice for OCPP 2.0.1 chargers,
    /// `disconnect` by default, as 2.0.1 Part 4 §6.3 asks.
    pub mode_201: OfflineMode,
    /// OCPP 1.6 StopTransactionOnInvalidId, applied by the gateway to
    /// transactions it let start offline.
    pub stop_on_invalid_id: bool,
}

pub(super) fn read_offline(
    root: &Table,
    r: &mut Reader,
    heartbeat_interval: u32,
) -> OfflineSection {
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
    let policy = Policy {
        authorize,
        id_tags: read_id_tags(off, r),
        heartbeat_interval,
    };
    let retry = r.int(
        off,
        "offline",
        "transaction_message_retry_interval_secs",
        10,
        0,
        86_400,
    );
    OfflineSection {
        policy,
        tx_attempts: r.int(off, "offline", "transaction_message_attempts", 3, 1, 100) as u32,
        max_queued: r.int(
            off,
            "offline",
            "max_queued_messages",
            20_000,
            10,
            10_000_000,
        ) as usize,
        tx_retry_interval: Duration::from_secs(retry as u64),
        mode: read_offline_mode(r, off, "mode", "hold"),
        mode_201: read_offline_mode(r, off, "mode_ocpp201", "disconnect"),
        stop_on_invalid_id: r.boolean(off, "offline", "stop_transaction_on_invalid_id", true),
    }
}

fn read_id_tags(off: Option<&Table>, r: &mut Reader) -> HashMap<String, String> {
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
    id_tags
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

/// `[api]`: the local HTTP API and web page.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSection {
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// Host names the API answers to besides IP addresses, `localhost`
    /// and this machine's name (DNS rebinding).
    pub host_names: Vec<String>,
}

pub(super) fn read_api(root: &Table, r: &mut Reader) -> ApiSection {
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
    let listen = r.addr(a, "api", "listen", "127.0.0.1:8180");
    let token = r.string(a, "api", "token", None).filter(|t| !t.is_empty());
    let host_names = match a.and_then(|t| t.get("host_names")) {
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
    if !listen.ip().is_loopback() && token.is_none() {
        r.problem(
            "api.token",
            format!("expected a token: the API listens on {listen}, which is not loopback"),
        );
    }
    ApiSection {
        listen,
        token,
        host_names,
    }
}

/// `[actions]` (formerly in `[api]`): what staff's actions use, from the
/// CLI, the API, the web page and MQTT alike.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionsSection {
    /// Id tag for a remote start when none is given.
    pub default_id_tag: String,
    /// Force stop: how long each step waits for the charger's StopTransaction.
    pub force_stop_wait: Duration,
}

pub(super) fn read_actions(root: &Table, r: &mut Reader) -> ActionsSection {
    let a = root.get("api").and_then(Value::as_table);
    let act = r.table(root, "actions");
    if let Some(t) = act {
        r.unknown_keys(t, "actions", &["default_id_tag", "force_stop_wait_secs"]);
    }
    let (tag_section, tag_table) = r.moved(a, act, "api", "actions", "default_id_tag");
    let default_id_tag = r
        .string(tag_table, tag_section, "default_id_tag", Some("CHARGEGATE"))
        .unwrap_or_default();
    if default_id_tag.is_empty() || default_id_tag.len() > 20 {
        r.problem(
            &format!("{tag_section}.default_id_tag"),
            "expected an id tag of 1 to 20 characters",
        );
    }
    let (wait_section, wait_table) = r.moved(a, act, "api", "actions", "force_stop_wait_secs");
    let wait = r.int(
        wait_table,
        wait_section,
        "force_stop_wait_secs",
        30,
        1,
        3600,
    );
    ActionsSection {
        default_id_tag,
        force_stop_wait: Duration::from_secs(wait as u64),
    }
}

/// `[diagnostics]`: where chargers upload diagnostics files (GetDiagnostics).
#[derive(Debug, Clone, PartialEq)]
pub struct DiagnosticsSection {
    pub listen: SocketAddr,
    pub max_bytes: usize,
}

pub(super) fn read_diagnostics(
    root: &Table,
    r: &mut Reader,
    ocpp: SocketAddr,
) -> DiagnosticsSection {
    let d = r.table(root, "diagnostics");
    if let Some(t) = d {
        r.unknown_keys(t, "diagnostics", &["listen", "max_size_mb"]);
    }
    // By default next to the OCPP port, on the same address.
    let port = if ocpp.port() == 0 {
        0
    } else {
        ocpp.port().saturating_add(1)
    };
    let default_upload = SocketAddr::new(ocpp.ip(), port).to_string();
    DiagnosticsSection {
        listen: r.addr(d, "diagnostics", "listen", &default_upload),
        max_bytes: r.int(d, "diagnostics", "max_size_mb", 20, 1, 1024) as usize * 1024 * 1024,
    }
}

/// `[journal]`: the local log's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalSection {
    pub max_age: Duration,
    pub max_bytes: u64,
    /// Relayed history is written at least this often (`commit_interval_secs`).
    pub commit_interval: Duration,
}

pub(super) fn read_journal(root: &Table, r: &mut Reader) -> JournalSection {
    let j = r.table(root, "journal");
    if let Some(t) = j {
        r.unknown_keys(
            t,
            "journal",
            &["max_age_days", "max_size_mb", "commit_interval_secs"],
        );
    }
    JournalSection {
        max_age: Duration::from_secs(
            r.int(j, "journal", "max_age_days", 90, 1, 3650) as u64 * 86_400,
        ),
        max_bytes: r.int(j, "journal", "max_size_mb", 256, 1, 1 << 20) as u64 * 1024 * 1024,
        commit_interval: Duration::from_secs(
            r.int(j, "journal", "commit_interval_secs", 5, 0, 60) as u64
        ),
    }
}
