//! The MQTT topic layout, each charger's state document and the Home
//! Assistant discovery configs, pure: live state in, topics and JSON out.
//!
//! Layout under `{prefix}/{gateway}/` (retained unless noted):
//!
//! - `status`: `online` / `offline` (the last will)
//! - `gateway`: chargers connected, load management (JSON)
//! - `meter`: the site meter's reading (JSON)
//! - `{charger}/availability`: `online` while the charger is connected
//! - `{charger}/state`: the charger's state (JSON, see [`charger_state`])
//! - `{charger}/event`: each journal event (JSON, not retained)
//! - `{charger}/cmd/{action}`: commands in (`reboot`, `start`, `stop`,
//!   `force-stop`, `check`, `pause` ON/OFF, `limit` amperes, …)
//! - `{charger}/result`: each command's result (JSON, not retained)

use serde_json::{json, Value};

use crate::state::ChargerState;

mod gateway;
pub use self::gateway::gateway_discovery;

/// Topic names for one gateway.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `{prefix}/{gateway}`.
    pub base: String,
    pub discovery_prefix: String,
    pub gateway: String,
}

/// A charger id as one topic level: `+`, `#` and `%` percent-encoded.
pub fn level(id: &str) -> String {
    id.replace('%', "%25")
        .replace('+', "%2B")
        .replace('#', "%23")
}

fn unlevel(s: &str) -> String {
    s.replace("%2B", "+")
        .replace("%23", "#")
        .replace("%25", "%")
}

/// Home Assistant's `slugify`: lowercase ASCII letters and digits, single
/// underscores between them.
fn slug(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

/// Discovery configs use `default_entity_id` (`domain.object`), which
/// replaces `object_id` (removed in Home Assistant 2026.4); the slug is
/// what Home Assistant made of the object id, so entity ids stay as they
/// were.
fn default_entity_ids(list: Vec<(String, Value)>) -> Vec<(String, Value)> {
    list.into_iter()
        .map(|(topic, mut v)| {
            let domain = topic.split('/').nth(1).unwrap_or("sensor").to_string();
            if let Some(o) = v.as_object_mut() {
                if let Some(Value::String(id)) = o.remove("object_id") {
                    o.insert(
                        "default_entity_id".into(),
                        format!("{domain}.{}", slug(&id)).into(),
                    );
                }
            }
            (topic, v)
        })
        .collect()
}

/// A charger id as a discovery node id, one to one: letters, digits and
/// `-` as they are, anything else (`_` too) as `_hex_`, so that `CP.1`
/// and `CP_1` cannot share (and take over) one Home Assistant device.
pub fn charger_object_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            out.push(c);
        } else {
            out.push_str(&format!("_{:x}_", c as u32));
        }
    }
    out
}

/// An id Home Assistant accepts in discovery topics and unique ids.
pub fn object_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Layout {
    pub fn new(prefix: &str, gateway: &str, discovery_prefix: &str) -> Layout {
        Layout {
            base: format!("{prefix}/{gateway}"),
            discovery_prefix: discovery_prefix.to_string(),
            gateway: gateway.to_string(),
        }
    }

    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// The gateway's own state (chargers connected, load management).
    pub fn gateway_state(&self) -> String {
        format!("{}/gateway", self.base)
    }

    pub fn meter(&self) -> String {
        format!("{}/meter", self.base)
    }

    fn charger(&self, id: &str, leaf: &str) -> String {
        format!("{}/{}/{leaf}", self.base, level(id))
    }

    pub fn availability(&self, id: &str) -> String {
        self.charger(id, "availability")
    }

    pub fn state(&self, id: &str) -> String {
        self.charger(id, "state")
    }

    pub fn event(&self, id: &str) -> String {
        self.charger(id, "event")
    }

    pub fn result(&self, id: &str) -> String {
        self.charger(id, "result")
    }

    pub fn command(&self, id: &str, action: &str) -> String {
        self.charger(id, &format!("cmd/{action}"))
    }

    /// Subscription for every charger's commands.
    pub fn command_filter(&self) -> String {
        format!("{}/+/cmd/+", self.base)
    }

    /// (charger, action) of a command topic.
    pub fn parse_command(&self, topic: &str) -> Option<(String, String)> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (id, cmd, action) = (parts.next()?, parts.next()?, parts.next()?);
        (cmd == "cmd" && parts.next().is_none() && !id.is_empty())
            .then(|| (unlevel(id), action.to_string()))
    }

    /// Home Assistant's birth message topic.
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }

    /// Subscription that returns every retained discovery config, to find
    /// those of chargers no longer configured.
    pub fn discovery_filter(&self) -> String {
        format!("{}/+/+/+/config", self.discovery_prefix)
    }

    fn gateway_node(&self) -> String {
        object_id(&format!("chargegate_{}", self.gateway))
    }

    /// Discovery node id of a charger's device.
    pub fn charger_node(&self, id: &str) -> String {
        format!("{}__{}", self.gateway_node(), charger_object_id(id))
    }

    /// The charger whose node a discovery topic belongs to (its node id).
    pub fn node_of_discovery_topic<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic
            .strip_prefix(&self.discovery_prefix)?
            .strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (_component, node, _object, config) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let ours = node.starts_with(&format!("{}__", self.gateway_node()));
        (config == "config" && parts.next().is_none() && ours).then_some(node)
    }

    fn discovery_topic(&self, component: &str, node: &str, object: &str) -> String {
        format!(
            "{}/{component}/{node}/{object}/config",
            self.discovery_prefix
        )
    }
}

/// What a charger's state document is made of besides its journal state.
pub struct Extra<'a> {
    pub connected: bool,
    pub standalone: bool,
    /// The gateway's limit now and why (smart charging).
    pub limit: Option<(f64, &'a str)>,
    /// The current cap staff can set (the number entity's value).
    pub max_current: f64,
    pub now_ms: i64,
}

/// The charger's retained state document.
pub fn charger_state(s: &ChargerState, x: &Extra) -> Value {
    let status = s
        .connectors
        .get(&1)
        .or_else(|| s.connectors.values().next())
        .map_or("Unknown", |c| c.status.as_str());
    // Home Assistant's enum sensor accepts only its listed options.
    let status = if statuses().any(|s| s == status) {
        status
    } else {
        "Unknown"
    };
    // The charger's last reading holds after a session; what it draws
    // without one is nothing.
    let drawing = !s.transactions.is_empty();
    let energy_kwh = s.meter.energy_wh.map(|wh| wh / 1000.0);
    let session = s.transactions.values().next().map(|t| {
        let started_ms = t
            .started
            .parse::<jiff::Timestamp>()
            .map(|ts| ts.as_millisecond())
            .ok();
        json!({
            "connector": t.connector,
            "transaction_id": t.transaction_id.map_or_else(|| json!(t.transaction_ref), |i| json!(i)),
            "id_tag": t.id_tag,
            "started": t.started,
            "energy_kwh": s.meter.energy_wh.map(|wh| (wh - t.meter_start as f64).max(0.0) / 1000.0),
            "duration_s": started_ms.map(|ms| ((x.now_ms - ms) / 1000).max(0)),
        })
    });
    let paused = s
        .override_
        .as_ref()
        .is_some_and(|o| o.pause || o.limit_a == 0.0);
    json!({
        "charger_link": if x.connected { "up" } else { "down" },
        "cloud_link": if x.standalone { "standalone" } else if s.cloud_link.up { "up" } else { "down" },
        "status": status,
        "connectors": s.connectors.iter().map(|(n, c)| (n.to_string(), json!(c.status))).collect::<serde_json::Map<_, _>>(),
        "power_w": if drawing { s.meter.power_w } else { Some(0.0) },
        "current_a": if drawing { s.meter.current_a } else { Some(0.0) },
        "energy_kwh": energy_kwh,
        "session": session,
        "session_energy_kwh": session.as_ref().and_then(|v| v["energy_kwh"].as_f64()).unwrap_or(0.0),
        "limit_a": x.limit.map(|l| l.0),
        "limit_reason": x.limit.map(|l| l.1),
        "paused": if paused { "ON" } else { "OFF" },
        // The cap staff set (0 included), kept through a pause.
        "cap_a": s.cap.as_ref().map_or(x.max_current, |o| o.limit_a),
        "vendor": s.boot.as_ref().map(|b| &b.vendor),
        "model": s.boot.as_ref().map(|b| &b.model),
        "firmware": s.boot.as_ref().and_then(|b| b.firmware.as_ref()),
        "last_event": s.last_event,
        "mirrors": s.mirrors.iter().map(|(n, l)| (n.clone(), json!(if l.up { "up" } else { "down" }))).collect::<serde_json::Map<_, _>>(),
    })
}

/// What 2.0.1 adds to 1.6's connector statuses (a connector status and
/// charging states); with those and `Unknown`, the options of the Status
/// enum sensor.
const STATUSES_201: &[&str] = &["Occupied", "EVConnected", "Idle"];

/// Every status the Status sensor may show.
fn statuses() -> impl Iterator<Item = &'static str> {
    crate::ocpp::messages::STATUSES
        .iter()
        .chain(STATUSES_201)
        .chain(&["Unknown"])
        .copied()
}

/// The buttons: (object id, name, action, extra discovery keys).
fn buttons() -> [(&'static str, &'static str, &'static str, Value); 5] {
    [
        (
            "reboot",
            "Reboot",
            "reboot",
            json!({"device_class": "restart", "entity_category": "config"}),
        ),
        (
            "start",
            "Start charge",
            "start",
            json!({"icon": "mdi:play-circle"}),
        ),
        (
            "stop",
            "Stop charge",
            "stop",
            json!({"icon": "mdi:stop-circle"}),
        ),
        (
            "force_stop",
            "Force stop",
            "force-stop",
            json!({"icon": "mdi:alert-octagon"}),
        ),
        (
            "check",
            "Run a check",
            "check",
            json!({"icon": "mdi:stethoscope", "entity_category": "diagnostic"}),
        ),
    ]
}

/// Every discovery config (topic, retained JSON) of one charger's device.
/// `standalone`: no cloud, so no cloud link entity.
pub fn charger_discovery(
    l: &Layout,
    id: &str,
    s: Option<&ChargerState>,
    commands: bool,
    max_current: f64,
    standalone: bool,
) -> Vec<(String, Value)> {
    let node = l.charger_node(id);
    let boot = s.and_then(|s| s.boot.as_ref());
    let mut device = json!({
        "identifiers": [node],
        "name": id,
        "manufacturer": boot.map_or("unknown", |b| b.vendor.as_str()),
        "model": boot.map_or("OCPP 1.6 charger", |b| b.model.as_str()),
        "via_device": l.gateway_node(),
    });
    // Home Assistant refuses a `null` in `device` (and with it every
    // entity of the charger): an absent firmware version is left out.
    if let Some(fw) = boot.and_then(|b| b.firmware.clone()) {
        device["sw_version"] = fw.into();
    }
    let state = l.state(id);
    // Most entities need the gateway and the charger; the link sensors only
    // the gateway (a down link is their news).
    let both = json!([
        {"topic": l.status()},
        {"topic": l.availability(id)},
    ]);
    let gateway_only = json!([{"topic": l.status()}]);
    let entity = |object: &str, name: &str, avail: &Value, extra: Value| {
        let mut v = json!({
            "name": name,
            "unique_id": format!("{node}_{object}"),
            // The charger's id and the entity, as Home Assistant names an
            // entity of a device (see `default_entity_ids`).
            "object_id": format!("{id}_{object}"),
            "device": device,
            "availability": avail,
            "availability_mode": "all",
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };
    let sensor = |object: &str, name: &str, tpl: &str, extra: Value| {
        let mut e = json!({"state_topic": state, "value_template": tpl});
        if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        (
            l.discovery_topic("sensor", &node, object),
            entity(object, name, &both, e),
        )
    };
    let mut out = vec![
        sensor(
            "status",
            "Status",
            "{{ value_json.status }}",
            json!({"icon": "mdi:ev-station", "device_class": "enum", "options": statuses().collect::<Vec<_>>()}),
        ),
        sensor(
            "power",
            "Power",
            "{{ value_json.power_w | float(0) }}",
            json!({"device_class": "power", "unit_of_measurement": "W", "state_class": "measurement"}),
        ),
        sensor(
            "current",
            "Current",
            "{{ value_json.current_a | float(0) }}",
            json!({"device_class": "current", "unit_of_measurement": "A", "state_class": "measurement"}),
        ),
        sensor(
            "energy",
            "Energy",
            "{{ value_json.energy_kwh }}",
            json!({"device_class": "energy", "unit_of_measurement": "kWh", "state_class": "total_increasing"}),
        ),
        // No state class: it restarts at every session, and the Energy
        // dashboard would count it on top of the charger's Energy.
        sensor(
            "session_energy",
            "Session energy",
            "{{ value_json.session_energy_kwh }}",
            json!({"device_class": "energy", "unit_of_measurement": "kWh"}),
        ),
        sensor(
            "current_limit",
            "Current limit",
            "{{ value_json.limit_a }}",
            json!({"device_class": "current", "unit_of_measurement": "A", "state_class": "measurement", "json_attributes_topic": state, "json_attributes_template": "{{ {'reason': value_json.limit_reason} | tojson }}"}),
        ),
    ];
    // What became of the last button press, switch or number change (the
    // command results are not retained: HA shows the latest since it
    // started).
    out.push((
        l.discovery_topic("sensor", &node, "last_action"),
        entity(
            "last_action",
            "Last action",
            &gateway_only,
            json!({
                "state_topic": l.result(id),
                "value_template": "{{ (value_json.action ~ ': ' ~ (value_json.error if value_json.error else (value_json.result.status if value_json.result is mapping and value_json.result.status is defined else value_json.outcome)))[:250] }}",
                "icon": "mdi:gesture-tap-button",
            }),
        ),
    ));
    let mut links = vec![(
        "charger_link",
        "Connected to gateway",
        "{{ 'ON' if value_json.charger_link == 'up' else 'OFF' }}",
        &gateway_only,
    )];
    if !standalone {
        links.push((
            "cloud_link",
            "Connected to cloud",
            "{{ 'ON' if value_json.cloud_link == 'up' else 'OFF' }}",
            &gateway_only,
        ));
    }
    for (object, name, tpl, avail) in links {
        out.push((
            l.discovery_topic("binary_sensor", &node, object),
            entity(object, name, avail, json!({"state_topic": state, "value_template": tpl, "device_class": "connectivity", "entity_category": "diagnostic"})),
        ));
    }
    if commands {
        for (object, name, action, extra) in buttons() {
            let mut e = json!({"command_topic": l.command(id, action), "payload_press": "PRESS"});
            if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
                o.extend(x.clone());
            }
            out.push((
                l.discovery_topic("button", &node, object),
                entity(object, name, &both, e),
            ));
        }
        out.push((
            l.discovery_topic("switch", &node, "pause"),
            entity(
                "pause",
                "Pause charging",
                &both,
                json!({
                    "command_topic": l.command(id, "pause"),
                    "state_topic": state,
                    "value_template": "{{ value_json.paused }}",
                    "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF",
                    "icon": "mdi:pause-circle",
                }),
            ),
        ));
        out.push((
            l.discovery_topic("number", &node, "current_cap"),
            entity(
                "current_cap",
                "Current cap",
                &both,
                json!({
                    "command_topic": l.command(id, "limit"),
                    "state_topic": state,
                    "value_template": "{{ value_json.cap_a }}",
                    "min": 0, "max": max_current, "step": 1, "mode": "box",
                    "device_class": "current", "unit_of_measurement": "A",
                }),
            ),
        ));
    }
    default_entity_ids(out)
}

/// The topics a charger's discovery would use, to clear them.
pub fn charger_discovery_topics(l: &Layout, id: &str) -> Vec<String> {
    charger_discovery(l, id, None, true, 32.0, false)
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new("chargegate", "site-1", "homeassistant")
    }

    #[test]
    fn charger_nodes_are_one_to_one() {
        let l = layout();
        let ids = ["CP.1", "CP_1", "CP-1", "CP 1", "CP_2e_1", "CPé1", "cp.1"];
        let nodes: std::collections::BTreeSet<String> =
            ids.iter().map(|i| l.charger_node(i)).collect();
        assert_eq!(nodes.len(), ids.len(), "{nodes:?}");
        for n in &nodes {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{n}"
            );
        }
        assert_eq!(
            l.charger_node("CP-1"),
            "chargegate_site-1__CP-1",
            "plain ids unchanged"
        );
    }

    #[test]
    fn topics_round_trip_odd_charger_ids() {
        let l = layout();
        let t = l.command("CP+1#%", "reboot");
        assert_eq!(t, "chargegate/site-1/CP%2B1%23%25/cmd/reboot");
        assert_eq!(
            l.parse_command(&t),
            Some(("CP+1#%".into(), "reboot".into()))
        );
        assert_eq!(l.parse_command("chargegate/site-1/CP-1/state"), None);
        assert_eq!(l.parse_command("chargegate/site-2/CP-1/cmd/reboot"), None);
        assert_eq!(l.parse_command("chargegate/site-1/CP-1/cmd/reboot/x"), None);
    }

    #[test]
    fn discovery_has_what_home_assistant_requires() {
        let l = layout();
        let configs = charger_discovery(&l, "CP-1", None, true, 32.0, false);
        let mut unique = std::collections::BTreeSet::new();
        for (topic, c) in &configs {
            assert!(
                topic.starts_with("homeassistant/") && topic.ends_with("/config"),
                "{topic}"
            );
            assert!(
                unique.insert(c["unique_id"].as_str().unwrap().to_string()),
                "unique ids: {topic}"
            );
            assert_eq!(c["device"]["identifiers"][0], "chargegate_site-1__CP-1");
            // Home Assistant 2026.4 removed `object_id`, and refuses nulls
            // in `device`; its entity ids are `domain.slug`.
            assert!(c.get("object_id").is_none(), "{c}");
            let domain = topic.split('/').nth(1).unwrap();
            let eid = c["default_entity_id"].as_str().unwrap();
            let (d, obj) = eid.split_once('.').unwrap();
            assert_eq!(d, domain, "{eid}");
            assert!(
                !obj.is_empty()
                    && !obj.starts_with('_')
                    && !obj.ends_with('_')
                    && !obj.contains("__")
                    && obj
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "a valid Home Assistant entity id: {eid}"
            );
            assert!(
                c["device"]
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|v| !v.is_null()),
                "no null in device: {c}"
            );
            assert_eq!(c["device"]["via_device"], "chargegate_site-1");
            assert_eq!(c["availability"][0]["topic"], "chargegate/site-1/status");
            assert!(
                c.get("state_topic").is_some() || c.get("command_topic").is_some(),
                "{c}"
            );
            assert_eq!(
                l.node_of_discovery_topic(topic),
                Some("chargegate_site-1__CP-1")
            );
        }
        assert_eq!(
            configs
                .iter()
                .find(|(t, _)| t.contains("/energy/"))
                .unwrap()
                .1["default_entity_id"],
            "sensor.cp_1_energy",
            "the device's name and the entity's, as Home Assistant names them"
        );
        let by = |obj: &str| {
            &configs
                .iter()
                .find(|(t, _)| t.contains(&format!("/{obj}/")))
                .unwrap()
                .1
        };
        assert_eq!(by("energy")["state_class"], "total_increasing");
        assert_eq!(by("energy")["unit_of_measurement"], "kWh");
        assert_eq!(
            by("reboot")["command_topic"],
            "chargegate/site-1/CP-1/cmd/reboot"
        );
        assert_eq!(by("pause")["payload_on"], "ON");
        // The link sensors stay available while the charger is away.
        assert_eq!(
            by("charger_link")["availability"].as_array().unwrap().len(),
            1
        );
        assert_eq!(by("power")["availability"].as_array().unwrap().len(), 2);
        // Read-only: no buttons, switch or number.
        let ro = charger_discovery(&l, "CP-1", None, false, 32.0, false);
        assert!(ro.iter().all(|(_, c)| c.get("command_topic").is_none()));
        assert!(ro.len() < configs.len());
        // Not ours: another gateway, or another integration.
        assert_eq!(
            l.node_of_discovery_topic("homeassistant/sensor/chargegate_site-2__CP-1/power/config"),
            None
        );
        assert_eq!(
            l.node_of_discovery_topic("homeassistant/sensor/shelly/power/config"),
            None
        );
        assert!(gateway_discovery(&l, true, true).len() > gateway_discovery(&l, false, true).len());
        assert!(
            gateway_discovery(&l, false, true).len() > gateway_discovery(&l, false, false).len()
        );
        // Standalone: no cloud link entity.
        let alone = charger_discovery(&l, "CP-1", None, true, 32.0, true);
        assert!(alone.iter().all(|(t, _)| !t.contains("/cloud_link/")));
        assert!(configs.iter().any(|(t, _)| t.contains("/cloud_link/")));
    }

    /// The rules Home Assistant's MQTT discovery schemas apply (from its
    /// documentation of each platform): required keys, known keys only,
    /// no nulls, device classes, units and state classes that fit.
    fn ha_rules(topic: &str, c: &Value) -> Vec<String> {
        let mut bad = Vec::new();
        let domain = topic.split('/').nth(1).unwrap_or("");
        let common = [
            "name",
            "unique_id",
            "default_entity_id",
            "device",
            "availability",
            "availability_mode",
            "icon",
            "entity_category",
            "json_attributes_topic",
            "json_attributes_template",
            "enabled_by_default",
        ];
        let own: &[&str] = match domain {
            "sensor" => &[
                "state_topic",
                "value_template",
                "device_class",
                "unit_of_measurement",
                "state_class",
                "options",
                "suggested_display_precision",
            ],
            "binary_sensor" => &[
                "state_topic",
                "value_template",
                "device_class",
                "payload_on",
                "payload_off",
            ],
            "button" => &["command_topic", "payload_press", "device_class"],
            "switch" => &[
                "command_topic",
                "state_topic",
                "value_template",
                "payload_on",
                "payload_off",
                "state_on",
                "state_off",
                "device_class",
            ],
            "number" => &[
                "command_topic",
                "state_topic",
                "value_template",
                "min",
                "max",
                "step",
                "mode",
                "device_class",
                "unit_of_measurement",
            ],
            other => {
                bad.push(format!("unknown platform {other}"));
                &[]
            }
        };
        let required: &[&str] = match domain {
            "sensor" | "binary_sensor" => &["state_topic"],
            _ => &["command_topic"],
        };
        fn no_null(v: &Value, path: &str, bad: &mut Vec<String>) {
            match v {
                Value::Null => bad.push(format!("null at {path}")),
                Value::Object(o) => o
                    .iter()
                    .for_each(|(k, v)| no_null(v, &format!("{path}.{k}"), bad)),
                Value::Array(a) => a.iter().for_each(|v| no_null(v, path, bad)),
                _ => {}
            }
        }
        no_null(c, "", &mut bad);
        let o = c.as_object().unwrap();
        for k in o.keys() {
            if !common.contains(&k.as_str()) && !own.contains(&k.as_str()) {
                bad.push(format!("{domain}: unknown key {k}"));
            }
        }
        for k in required.iter().chain(&["name", "unique_id", "device"]) {
            if !o.contains_key(*k) {
                bad.push(format!("{domain}: {k} missing"));
            }
        }
        for k in c["device"]
            .as_object()
            .map(|d| d.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if ![
                "identifiers",
                "name",
                "manufacturer",
                "model",
                "sw_version",
                "hw_version",
                "serial_number",
                "via_device",
                "configuration_url",
            ]
            .contains(&k.as_str())
            {
                bad.push(format!("device: unknown key {k}"));
            }
        }
        let class = c["device_class"].as_str();
        let classes: &[&str] = match domain {
            "sensor" => &["power", "current", "energy", "enum", "voltage"],
            "binary_sensor" => &["connectivity", "problem", "running"],
            "button" => &["restart", "identify", "update"],
            "switch" => &["outlet", "switch"],
            "number" => &["current", "power"],
            _ => &[],
        };
        if let Some(dc) = class {
            if !classes.contains(&dc) {
                bad.push(format!("{domain}: device_class {dc}"));
            }
        }
        let unit = c["unit_of_measurement"].as_str();
        let units: Option<&[&str]> = match class {
            Some("power") => Some(&["W", "kW"]),
            Some("current") => Some(&["A", "mA"]),
            Some("energy") => Some(&["Wh", "kWh"]),
            Some("voltage") => Some(&["V"]),
            _ => None,
        };
        if let (Some(units), true) = (units, domain == "sensor" || domain == "number") {
            if !unit.is_some_and(|u| units.contains(&u)) {
                bad.push(format!("{domain}: unit {unit:?} for {class:?}"));
            }
        }
        if class == Some("enum") {
            if unit.is_some() || o.contains_key("state_class") {
                bad.push("enum: no unit or state_class".into());
            }
            if !c["options"]
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string))
            {
                bad.push("enum: options, a list of strings".into());
            }
        }
        if let Some(sc) = c["state_class"].as_str() {
            if !["measurement", "total", "total_increasing"].contains(&sc) {
                bad.push(format!("state_class {sc}"));
            }
            if sc == "total_increasing" && class != Some("energy") && class.is_some() {
                bad.push(format!("total_increasing for {class:?}"));
            }
        }
        match (domain, c["entity_category"].as_str()) {
            (_, None) | (_, Some("diagnostic")) => {}
            ("sensor" | "binary_sensor", Some(cat)) => {
                bad.push(format!("{domain}: entity_category {cat}"))
            }
            (_, Some("config")) => {}
            (_, Some(cat)) => bad.push(format!("entity_category {cat}")),
        }
        if let Some(m) = c["availability_mode"].as_str() {
            if !["all", "any", "latest"].contains(&m) {
                bad.push(format!("availability_mode {m}"));
            }
        }
        if let Some(m) = c["mode"].as_str() {
            if !["auto", "box", "slider"].contains(&m) {
                bad.push(format!("number mode {m}"));
            }
        }
        bad
    }

    #[test]
    fn every_discovery_payload_passes_home_assistants_rules() {
        let l = layout();
        let s = ChargerState {
            boot: Some(crate::state::BootInfo {
                vendor: "V".into(),
                model: "M".into(),
                firmware: None,
                serial: None,
                time_ms: 0,
            }),
            ..Default::default()
        };
        let mut all = Vec::new();
        for (state, commands, standalone) in [
            (None, true, false),
            (Some(&s), true, true),
            (Some(&s), false, false),
        ] {
            all.extend(charger_discovery(
                &l, "CP-1", state, commands, 32.0, standalone,
            ));
        }
        for (meter, load) in [(true, true), (false, false)] {
            all.extend(gateway_discovery(&l, meter, load));
        }
        let mut problems = Vec::new();
        for (topic, c) in &all {
            for p in ha_rules(topic, c) {
                problems.push(format!("{topic}: {p}"));
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
        // The rules can fail: a null, an unknown key, a unit that does not fit.
        let (topic, good) = all.iter().find(|(t, _)| t.contains("/power/")).unwrap();
        for (key, value) in [
            ("sw", json!(1)),
            ("unit_of_measurement", json!("A")),
            ("icon", Value::Null),
        ] {
            let mut c = good.clone();
            c[key] = value;
            assert!(!ha_rules(topic, &c).is_empty(), "{key}");
        }
        let by = |obj: &str| {
            all.iter()
                .find(|(t, _)| t.contains(&format!("/{obj}/")))
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(by("reboot")["device_class"], "restart");
        assert_eq!(by("charger_link")["entity_category"], "diagnostic");
        assert_eq!(by("status")["device_class"], "enum");
        assert!(by("session_energy").get("state_class").is_none());
        assert_eq!(by("current_limit")["state_class"], "measurement");
        assert_eq!(
            by("last_action")["state_topic"],
            "chargegate/site-1/CP-1/result"
        );
        let gw = gateway_discovery(
            &Layout::new("chargegate", "chargegate", "homeassistant"),
            false,
            false,
        );
        assert_eq!(
            gw[0].1["device"]["name"], "ChargeGate",
            "not ChargeGate chargegate"
        );
        assert_eq!(
            gw[0].1["default_entity_id"],
            "sensor.chargegate_chargers_connected"
        );
    }

    #[test]
    fn state_document_follows_a_session() {
        let mut s = ChargerState::default();
        s.connectors.insert(
            1,
            crate::state::ConnectorState {
                status: "Charging".into(),
                error_code: "NoError".into(),
                since_ms: 0,
            },
        );
        s.transactions.insert(
            1,
            crate::state::Transaction {
                connector: 1,
                transaction_id: Some(7),
                transaction_ref: None,
                id_tag: "TAG".into(),
                meter_start: 1000,
                started: "2030-01-01T10:00:00Z".into(),
            },
        );
        s.meter.energy_wh = Some(3500.0);
        let now_ms = "2030-01-01T10:30:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let x = Extra {
            connected: true,
            standalone: false,
            limit: Some((16.0, "schedule")),
            max_current: 32.0,
            now_ms,
        };
        let v = charger_state(&s, &x);
        assert_eq!(v["status"], "Charging");
        assert_eq!(v["energy_kwh"], 3.5);
        assert_eq!(v["session"]["energy_kwh"], 2.5);
        assert_eq!(v["session"]["duration_s"], 1800);
        assert_eq!(v["session_energy_kwh"], 2.5);
        assert_eq!(v["limit_a"], 16.0);
        assert_eq!(v["paused"], "OFF");
        assert_eq!(v["cloud_link"], "down");
        // The session ends: the last reading stays in the meter, but the
        // charger draws nothing now; an unknown status is Unknown.
        s.meter.power_w = Some(22000.0);
        s.meter.current_a = Some(32.0);
        assert_eq!(charger_state(&s, &x)["power_w"], 22000.0);
        s.transactions.clear();
        s.connectors.get_mut(&1).unwrap().status = "Weird".into();
        let v = charger_state(&s, &x);
        assert_eq!(
            (v["power_w"].as_f64(), v["current_a"].as_f64()),
            (Some(0.0), Some(0.0))
        );
        assert_eq!(v["status"], "Unknown");
    }
}
