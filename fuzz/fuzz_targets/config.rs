//! The config parser: any file an installer (or a typo) can produce.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = chargegate::config::Config::parse(&text, "fuzz.toml");
});
