//! `[[mirror]]`: second backends that see every charger's traffic,
//! read-only unless their own calls are allowed.

use std::time::Duration;

use toml::Table;

use super::{check_ws_url, Reader, UpstreamConfig};

/// One second backend.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    /// Its name in the journal (`mirror:<name>`), the status and MQTT.
    pub name: String,
    /// Its connection settings (URL with the charger id appended, CA file,
    /// timeouts, backoff), as for `[upstream]`.
    pub link: UpstreamConfig,
    /// The chargers it sees (`*`: all).
    pub chargers: Vec<String>,
    /// The mirror's own calls that may reach a charger (none: read-only).
    pub allow: Vec<String>,
    /// Basic auth password presented as `chargerId:password`, if any.
    pub password: Option<String>,
    /// Per charger, a password of its own for this mirror (over `password`).
    pub passwords: std::collections::BTreeMap<String, String>,
    /// Per charger, the client certificate and key (PEM) it presents to
    /// this mirror (mirrors on Security Profile 3).
    pub certs: std::collections::BTreeMap<String, (std::path::PathBuf, std::path::PathBuf)>,
    /// The most messages kept for it per charger while it is away.
    pub backlog: usize,
}

impl MirrorConfig {
    /// The password charger `id` presents to this mirror, if any.
    pub fn password_for(&self, id: &str) -> Option<&str> {
        self.passwords
            .get(id)
            .or(self.password.as_ref())
            .map(String::as_str)
    }

    /// Whether it sees charger `id`.
    pub fn applies_to(&self, id: &str) -> bool {
        self.chargers.iter().any(|c| c == "*" || c == id)
    }
}

/// The OCPP 1.6 and 2.0.1 calls a CSMS can send a charger: what `allow`
/// may name.
pub const CSMS_CALLS: &[&str] = &[
    // 1.6
    "CancelReservation",
    "ChangeAvailability",
    "ChangeConfiguration",
    "ClearCache",
    "ClearChargingProfile",
    "DataTransfer",
    "GetCompositeSchedule",
    "GetConfiguration",
    "GetDiagnostics",
    "GetLocalListVersion",
    "RemoteStartTransaction",
    "RemoteStopTransaction",
    "ReserveNow",
    "Reset",
    "SendLocalList",
    "SetChargingProfile",
    "TriggerMessage",
    "UnlockConnector",
    "UpdateFirmware",
    // 2.0.1
    "GetVariables",
    "SetVariables",
    "GetBaseReport",
    "GetReport",
    "RequestStartTransaction",
    "RequestStopTransaction",
    "GetTransactionStatus",
    "GetLog",
    "SetVariableMonitoring",
    "ClearVariableMonitoring",
];

/// The keys a `[[mirror]]` takes.
const KEYS: &[&str] = &[
    "name",
    "url",
    "chargers",
    "allow",
    "password",
    "passwords",
    "certs",
    "ca_file",
    "connect_timeout_secs",
    "backoff_min_secs",
    "backoff_max_secs",
    "backlog",
];

/// Read every `[[mirror]]`; `upstream` is the cloud's URL, which a mirror
/// may not repeat.
pub(super) fn read(root: &Table, r: &mut Reader, upstream: Option<&str>) -> Vec<MirrorConfig> {
    let mut out: Vec<MirrorConfig> = Vec::new();
    for (section, t) in r
        .entries(root, "mirror", "mirror", None)
        .unwrap_or_default()
    {
        r.unknown_keys(t, &section, KEYS);
        let name = r.string(Some(t), &section, "name", None).filter(|n| {
            !n.is_empty()
                && n.len() <= 32
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        let Some(name) = name else {
            r.problem(
                &format!("{section}.name"),
                "expected a short name (letters, digits, - and _, at most 32), e.g. \"homeassistant\"",
            );
            continue;
        };
        let url = match r.string(Some(t), &section, "url", None) {
            None => {
                r.problem(
                    &format!("{section}.url"),
                    "expected the mirror's OCPP URL, e.g. \"ws://homeassistant.local:9000\"",
                );
                continue;
            }
            Some(u) => match check_ws_url(&u) {
                Ok(()) => u.trim_end_matches('/').to_string(),
                Err(why) => {
                    r.problem(&format!("{section}.url"), format!("{why}, found {u:?}"));
                    continue;
                }
            },
        };
        if upstream.is_some_and(|up| up.trim_end_matches('/') == url) {
            r.problem(
                &format!("{section}.url"),
                "is the [upstream] URL: the cloud would see every charger twice",
            );
        }
        let chargers = match t.get("chargers") {
            None => vec!["*".to_string()],
            Some(toml::Value::Array(a)) if a.iter().all(|v| v.is_str()) && !a.is_empty() => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(_) => {
                r.problem(
                    &format!("{section}.chargers"),
                    "expected a list of charger ids, or [\"*\"] for all",
                );
                vec![]
            }
        };
        let allow = match t.get("allow") {
            None => vec![],
            Some(toml::Value::Array(a)) if a.iter().all(|v| v.is_str()) => {
                let list: Vec<String> = a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                for action in &list {
                    if !CSMS_CALLS.contains(&action.as_str()) {
                        r.problem(
                            &format!("{section}.allow"),
                            format!(
                                "{action:?} is not a call a CSMS sends a charger (known: {})",
                                CSMS_CALLS.join(", ")
                            ),
                        );
                    }
                }
                list
            }
            Some(_) => {
                r.problem(&format!("{section}.allow"), "expected a list of OCPP actions, e.g. [\"GetConfiguration\", \"TriggerMessage\"]");
                vec![]
            }
        };
        let ca_file = r.pem_file(t, &section, "ca_file");
        let secs = |r: &mut Reader, key: &str, default: i64, max: i64| {
            r.secs(Some(t), &section, key, default, 0, max)
        };
        let link = UpstreamConfig {
            url,
            ca_file,
            connect_timeout: secs(r, "connect_timeout_secs", 10, 300).max(Duration::from_secs(1)),
            backoff_min: secs(r, "backoff_min_secs", 1, 3600).max(Duration::from_millis(100)),
            backoff_max: secs(r, "backoff_max_secs", 60, 86_400).max(Duration::from_secs(1)),
        };
        let password = r
            .string(Some(t), &section, "password", None)
            .filter(|p| !p.is_empty());
        let passwords = match t.get("passwords") {
            None => Default::default(),
            Some(toml::Value::Table(p))
                if p.values()
                    .all(|v| v.as_str().is_some_and(|s| !s.is_empty())) =>
            {
                p.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            }
            Some(_) => {
                r.problem(
                    &format!("{section}.passwords"),
                    "expected a table of charger id = \"password\", e.g. passwords = { \"CP-1\" = \"…\" }",
                );
                Default::default()
            }
        };
        let mut certs = std::collections::BTreeMap::new();
        match t.get("certs") {
            None => {}
            Some(toml::Value::Table(c)) => {
                for (id, v) in c {
                    let key = format!("{section}.certs.{id}");
                    let path = |name: &str| {
                        v.get(name)
                            .and_then(|p| p.as_str())
                            .map(std::path::PathBuf::from)
                    };
                    match (path("cert"), path("key")) {
                        (Some(cert), Some(k)) if cert.is_file() && k.is_file() => {
                            certs.insert(id.clone(), (cert, k));
                        }
                        (Some(_), Some(_)) => {
                            r.problem(&key, "expected readable PEM files for cert and key")
                        }
                        _ => r.problem(&key, "expected { cert = \"…pem\", key = \"…key\" }"),
                    }
                }
            }
            Some(_) => r.problem(
                &format!("{section}.certs"),
                "expected a table of charger id = { cert = \"…\", key = \"…\" }",
            ),
        }
        let backlog = r.int(Some(t), &section, "backlog", 10_000, 10, 1_000_000) as usize;
        if out.iter().any(|m| m.name == name) {
            r.problem(
                &format!("{section}.name"),
                format!("{name:?} names another [[mirror]] too"),
            );
        }
        // The same backend twice for one charger: two connections under
        // one charger id, which a CSMS takes as a reconnect each time.
        for other in out.iter().filter(|m| m.link.url == link.url) {
            let overlap = chargers
                .iter()
                .find(|c| *c == "*" || other.applies_to(c))
                .or_else(|| other.chargers.iter().find(|c| *c == "*"));
            if let Some(c) = overlap {
                r.problem(
                    &format!("{section}.chargers"),
                    format!(
                        "mirror {:?} has the same URL and would receive {c:?} too",
                        other.name
                    ),
                );
            }
        }
        out.push(MirrorConfig {
            name,
            link,
            chargers,
            allow,
            password,
            passwords,
            certs,
            backlog,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(text: &str) -> Vec<(String, String)> {
        match Config::parse(text, "t.toml") {
            Ok(_) => vec![],
            Err(e) => e
                .problems
                .into_iter()
                .map(|p| (p.key, p.expected))
                .collect(),
        }
    }

    #[test]
    fn mirrors_are_checked_with_the_key_and_the_reason() {
        let ok = "[upstream]\nurl = \"wss://cloud/ocpp\"\n[[mirror]]\nname = \"ha\"\nurl = \"ws://ha:9000\"\nallow = [\"GetConfiguration\"]\n";
        assert_eq!(problems(ok), vec![]);
        let c = Config::parse(ok, "t").unwrap();
        assert_eq!(c.mirrors[0].chargers, vec!["*"], "all chargers by default");
        assert!(c.mirrors[0].applies_to("CP-1"));

        let same_as_upstream = "[upstream]\nurl = \"wss://cloud/ocpp\"\n[[mirror]]\nname = \"x\"\nurl = \"wss://cloud/ocpp/\"\n";
        let p = problems(same_as_upstream);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "mirror[0].url");
        assert!(p[0].1.contains("[upstream] URL"));

        let unknown_action = "[[mirror]]\nname = \"x\"\nurl = \"ws://m\"\nallow = [\"Rest\"]\n";
        let p = problems(unknown_action);
        assert_eq!(
            (p[0].0.as_str(), p[0].1.contains("\"Rest\" is not a call")),
            ("mirror[0].allow", true),
            "{p:?}"
        );

        let twice = "[[mirror]]\nname = \"a\"\nurl = \"ws://m\"\nchargers = [\"CP-1\"]\n[[mirror]]\nname = \"b\"\nurl = \"ws://m\"\nchargers = [\"CP-2\", \"CP-1\"]\n";
        let p = problems(twice);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "mirror[1].chargers");
        assert!(p[0].1.contains("would receive \"CP-1\" too"), "{p:?}");
        // The same URL for other chargers is fine.
        let apart = twice.replace("[\"CP-2\", \"CP-1\"]", "[\"CP-2\"]");
        assert_eq!(problems(&apart), vec![]);

        let per_charger = "[[mirror]]\nname = \"m\"\nurl = \"ws://m\"\npassword = \"shared\"\n[mirror.passwords]\n\"CP-1\" = \"own\"\n";
        let c = Config::parse(per_charger, "t").unwrap();
        assert_eq!(c.mirrors[0].password_for("CP-1"), Some("own"));
        assert_eq!(c.mirrors[0].password_for("CP-2"), Some("shared"));

        let bad = "[[mirror]]\nname = \"no spaces please\"\nurl = \"http://m\"\n";
        assert_eq!(problems(bad)[0].0, "mirror[0].name");
    }
}
