//! The HTTP API's and MQTT's JSON input: an action's parameters, turned
//! into an OCPP call or a pause/cap, and MQTT command payloads.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let names = chargegate::actions::NAMES;
    let name = names[data[0] as usize % names.len()];
    let body = &data[1..];
    if let Ok(req) = serde_json::from_slice::<chargegate::actions::ActionRequest>(body) {
        let _ = chargegate::actions::to_call(name, &req, None, "TAG");
        let now = jiff::Timestamp::UNIX_EPOCH;
        let _ = chargegate::actions::to_override(name, &req, now);
    }
    let _ = chargegate::mqtt::command(name, body);
});
