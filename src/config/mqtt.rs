//! The `[mqtt]` section: the broker, and how the gateway shows itself to
//! Home Assistant.

use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use super::Reader;

/// `[mqtt]`; present only when configured.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: bool,
    /// Extra CA (PEM) besides the system roots, for a broker with its own CA.
    pub ca_file: Option<PathBuf>,
    pub keepalive: Duration,
    /// Topic prefix; the gateway's topics live under `{prefix}/{gateway id}/`.
    pub prefix: String,
    pub discovery: bool,
    pub discovery_prefix: String,
    /// Accept commands (buttons, switch, number); false: read-only.
    pub commands: bool,
    pub backoff_max: Duration,
}

/// MQTT topic levels must not be empty nor hold wildcards.
fn topic_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains(['+', '#', '\0']) && !s.starts_with('/') && !s.ends_with('/')
}

pub(super) fn read(m: &Table, gateway_id: &str, r: &mut Reader) -> Option<MqttConfig> {
    r.unknown_keys(
        m,
        "mqtt",
        &[
            "host",
            "port",
            "client_id",
            "username",
            "password",
            "tls",
            "ca_file",
            "keepalive_secs",
            "prefix",
            "discovery",
            "discovery_prefix",
            "commands",
            "backoff_max_secs",
        ],
    );
    let Some(host) = r
        .string(Some(m), "mqtt", "host", None)
        .filter(|h| !h.is_empty())
    else {
        r.problem("mqtt.host", "expected the broker's host name or address, e.g. \"homeassistant.local\" (or remove [mqtt])");
        return None;
    };
    let tls = r.boolean(Some(m), "mqtt", "tls", false);
    let port = r.int(
        Some(m),
        "mqtt",
        "port",
        if tls { 8883 } else { 1883 },
        1,
        65_535,
    ) as u16;
    let ca_file = r.pem_file(m, "mqtt", "ca_file");
    let mut topic = |key: &str, default: &str| {
        let t = r
            .string(Some(m), "mqtt", key, Some(default))
            .unwrap_or_default();
        if !topic_ok(&t) {
            r.problem(
                &format!("mqtt.{key}"),
                format!("expected a topic prefix without +, # or leading/trailing /, found {t:?}"),
            );
        }
        t
    };
    let prefix = topic("prefix", "chargegate");
    let discovery_prefix = topic("discovery_prefix", "homeassistant");
    if !topic_ok(gateway_id) {
        r.problem("gateway.id", format!("expected no +, # or / at either end: it is an MQTT topic level, found {gateway_id:?}"));
    }
    let username = r
        .string(Some(m), "mqtt", "username", None)
        .filter(|s| !s.is_empty());
    let password = r
        .string(Some(m), "mqtt", "password", None)
        .filter(|s| !s.is_empty());
    if password.is_some() && username.is_none() {
        r.problem("mqtt.username", "expected a user name with the password");
    }
    Some(MqttConfig {
        client_id: r
            .string(
                Some(m),
                "mqtt",
                "client_id",
                Some(&format!("chargegate-{gateway_id}")),
            )
            .unwrap_or_default(),
        host,
        port,
        username,
        password,
        tls,
        ca_file,
        keepalive: r.secs(Some(m), "mqtt", "keepalive_secs", 30, 5, 3600),
        prefix,
        discovery: r.boolean(Some(m), "mqtt", "discovery", true),
        discovery_prefix,
        commands: r.boolean(Some(m), "mqtt", "commands", true),
        backoff_max: Duration::from_secs(
            r.int(Some(m), "mqtt", "backoff_max_secs", 30, 1, 3600) as u64
        ),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn mqtt_section_defaults_and_mistakes() {
        let c = Config::parse("[mqtt]\nhost = \"broker.lan\"\ntls = true\n", "t.toml").unwrap();
        let m = c.mqtt.unwrap();
        assert_eq!(
            (m.port, m.prefix.as_str(), m.discovery_prefix.as_str()),
            (8883, "chargegate", "homeassistant")
        );
        assert_eq!(m.client_id, "chargegate-chargegate");
        assert!(m.commands && m.discovery);
        let e =
            Config::parse("[mqtt]\nprefix = \"a/#\"\npassword = \"x\"\n", "t.toml").unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["mqtt.host"],
            "a missing host stops the section early: {e}"
        );
        let e = Config::parse(
            "[mqtt]\nhost = \"h\"\nprefix = \"a/#\"\npassword = \"x\"\n",
            "t.toml",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["mqtt.prefix", "mqtt.username"]);
    }
}
