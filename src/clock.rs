//! The gateway's wall clock. Schedules and charging profiles are about
//! wall-clock time; tests move this clock instead of waiting for 22:00.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use jiff::Timestamp;

/// System time plus an offset that only tests change.
#[derive(Clone, Default, Debug)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Now, as the gateway sees it.
    pub fn now(&self) -> Timestamp {
        let ms = Timestamp::now().as_millisecond() + self.offset_ms.load(Ordering::Relaxed);
        Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX)
    }

    /// Make `now()` return `t` from here on (time keeps running from there).
    pub fn set(&self, t: Timestamp) {
        let off = t.as_millisecond() - Timestamp::now().as_millisecond();
        self.offset_ms.store(off, Ordering::Relaxed);
    }
}

/// Now as RFC 3339 UTC with milliseconds, as OCPP timestamps are written.
pub fn now_rfc3339() -> String {
    format_ms(time::OffsetDateTime::now_utc())
}

/// A UTC time as `2026-01-01T12:00:00.000Z`.
pub fn format_ms(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_moves_now_and_time_keeps_running() {
        let c = Clock::default();
        let t: Timestamp = "2030-01-07T21:59:00Z".parse().unwrap();
        c.set(t);
        let d = c.now().as_millisecond() - t.as_millisecond();
        assert!((0..5_000).contains(&d), "{d}");
        let sys = Clock::default().now().as_millisecond() - Timestamp::now().as_millisecond();
        assert!(sys.abs() < 5_000, "{sys}");
    }
}
