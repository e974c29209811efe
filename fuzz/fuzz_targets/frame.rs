//! The OCPP-J frame parser: anything a peer can send in a text frame.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = chargegate::ocpp::frame::parse(&text) {
        // The error's own answer must be buildable too.
        let _ = e.error_code(chargegate::ocpp::Protocol::Ocpp16);
        if e.wants_reply() {
            let _ = chargegate::ocpp::frame::call_error(e.reply_id(), "FormationViolation", &e.detail);
        }
    }
});
