//! Logging: to the systemd journal when running under journald (structured,
//! with the charger id as the CHARGER_ID field), else plain lines on stderr.
//! The level comes from RUST_LOG if set, else from the config.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level
            && (m.target().starts_with("chargegate") || m.level() <= Level::Warn)
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = crate::clock::now_rfc3339();
        // Messages quote what chargers send: one line each, no escapes.
        let msg = r.args().to_string();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{now} {:<5} {}",
            r.level(),
            crate::text::printable(&msg)
        );
    }

    fn flush(&self) {}
}

/// Install the logger once, at start. `RUST_LOG` (a level name) wins over
/// the configured level.
pub fn init(configured: LevelFilter) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(configured);
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    if under_journald {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            if j.install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(Stderr { level })).is_ok() {
        log::set_max_level(level);
    }
}
