//! `[[charger]]` and `[upstream]`: the known chargers (ids, passwords,
//! security profiles, limits) and the cloud, with the checks of charger
//! ids and cloud URLs that the API and the CLI use too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use super::{ChargerLimits, Reader, TlsListen};

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

pub(super) fn read_upstream(u: &Table, r: &mut Reader) -> Option<UpstreamConfig> {
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
    let connect_timeout = r.secs(Some(u), "upstream", "connect_timeout_secs", 10, 1, 300);
    let backoff_min = Duration::from_millis(
        (r.int(Some(u), "upstream", "backoff_min_secs", 1, 0, 3600) * 1000).max(100) as u64,
    );
    let backoff_max = r.secs(Some(u), "upstream", "backoff_max_secs", 60, 1, 86_400);
    Some(UpstreamConfig {
        url,
        ca_file,
        connect_timeout,
        backoff_min,
        backoff_max,
    })
}

pub(super) fn read_chargers(
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
        known.extend_from_slice(super::smart::CHARGER_KEYS);
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
        let limits = super::smart::read_charger_limits(t, &section, r);
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
