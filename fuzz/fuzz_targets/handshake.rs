//! The charger handshake: an HTTP request as the gateway reads it from the
//! socket (path, headers, Basic auth), and the decision on it.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokio_tungstenite::tungstenite::handshake::machine::TryParse;
use tokio_tungstenite::tungstenite::handshake::server::Request;

fn config() -> &'static chargegate::config::Config {
    static C: OnceLock<chargegate::config::Config> = OnceLock::new();
    C.get_or_init(|| {
        let text = "[ocpp]\nallow_unknown_chargers = false\n\
            [[charger]]\nid = \"CP-1\"\npassword = \"0123456789abcdef\"\n\
            [[charger]]\nid = \"CP-3\"\n";
        chargegate::config::Config::parse(text, "fuzz.toml").expect("fuzz config")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, req))) = Request::try_parse(data) {
        let transport = chargegate::tls::Transport {
            tls: data.len() % 2 == 0,
            client_cn: (data.len() % 3 == 0).then(|| "CP-3".to_string()),
        };
        let _ = chargegate::server::check_request(&req, config(), &transport);
    }
});
