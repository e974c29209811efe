//! Home Assistant discovery of the gateway itself: its connectivity, the
//! chargers connected, load management and the site meter.

use serde_json::{json, Value};

use super::*;

/// The gateway's own device: chargers connected, load management (the
/// current available only with `load`), and the site meter.
pub fn gateway_discovery(l: &Layout, meter: bool, load: bool) -> Vec<(String, Value)> {
    let node = l.gateway_node();
    // The default id is not said twice ("ChargeGate chargegate").
    let (name, prefix) = if l.gateway == "chargegate" {
        ("ChargeGate".to_string(), "chargegate".to_string())
    } else {
        (
            format!("ChargeGate {}", l.gateway),
            format!("chargegate_{}", l.gateway),
        )
    };
    let device = json!({
        "identifiers": [node],
        "name": name,
        "manufacturer": "ChargeGate",
        "model": "OCPP gateway",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let avail = json!([{"topic": l.status()}]);
    let g = l.gateway_state();
    let mut list = vec![
        (
            "chargers_connected",
            "Chargers connected",
            g.clone(),
            "{{ value_json.chargers_connected }}",
            json!({"icon": "mdi:ev-station", "state_class": "measurement"}),
        ),
        (
            "load_management",
            "Load management",
            g.clone(),
            "{{ value_json.load }}",
            json!({"icon": "mdi:transmission-tower"}),
        ),
    ];
    if load {
        list.push((
            "available_current",
            "Current available to chargers",
            g,
            "{{ value_json.available_a }}",
            json!({"device_class": "current", "unit_of_measurement": "A", "state_class": "measurement"}),
        ));
    }
    if meter {
        let amps = json!({"device_class": "current", "unit_of_measurement": "A", "state_class": "measurement"});
        for (object, name, tpl, extra) in [
            (
                "grid_l1",
                "Grid current L1",
                "{{ value_json.current[0] }}",
                amps.clone(),
            ),
            (
                "grid_l2",
                "Grid current L2",
                "{{ value_json.current[1] }}",
                amps.clone(),
            ),
            (
                "grid_l3",
                "Grid current L3",
                "{{ value_json.current[2] }}",
                amps,
            ),
            (
                "grid_power",
                "Grid power",
                "{{ value_json.power_w }}",
                json!({"device_class": "power", "unit_of_measurement": "W", "state_class": "measurement"}),
            ),
            (
                "grid_energy",
                "Grid energy import",
                "{{ value_json.energy_import_kwh }}",
                json!({"device_class": "energy", "unit_of_measurement": "kWh", "state_class": "total_increasing"}),
            ),
        ] {
            list.push((object, name, l.meter(), tpl, extra));
        }
    }
    default_entity_ids(
        list.into_iter()
            .map(|(object, name, topic, tpl, extra)| {
                let mut v = json!({
                    "name": name,
                    "unique_id": format!("{node}_{object}"),
                    "object_id": format!("{prefix}_{object}"), // see `default_entity_ids`
                    "device": device,
                    "availability": avail,
                    "state_topic": topic,
                    "value_template": tpl,
                });
                if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
                    o.extend(x.clone());
                }
                (l.discovery_topic("sensor", &node, object), v)
            })
            .collect(),
    )
}
