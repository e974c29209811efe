//! The payload decoders the gateway interprets: a CALL from a charger as
//! the journal reads it (boot, status, transactions, meter values…) and
//! the answers the gateway gives by itself.
#![no_main]
use chargegate::event::{self, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(chargegate::ocpp::frame::Frame::Call { action, payload, .. }) = chargegate::ocpp::frame::parse(&text) else {
        return;
    };
    let _ = event::journal_on_request(&action);
    let _ = event::for_charger_call(&action, &payload, None, Source::Charger);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(payload.get()) {
        let _ = event::redact(&action, &v);
    }
});
