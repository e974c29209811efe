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
    format_ms(Timestamp::now())
}

/// A time as UTC `2026-01-01T12:00:00.000Z` (milliseconds truncated).
pub fn format_ms(t: Timestamp) -> String {
    let ms = t.as_millisecond();
    let whole = Timestamp::from_second(ms.div_euclid(1000)).unwrap_or(t);
    format!(
        "{}.{:03}Z",
        whole.strftime("%Y-%m-%dT%H:%M:%S"),
        ms.rem_euclid(1000)
    )
}

/// A time in milliseconds since the Unix epoch, as [`format_ms`] writes it.
pub fn format_unix_ms(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), format_ms)
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

    #[test]
    fn times_are_written_in_utc_with_milliseconds() {
        let t: Timestamp = "2026-01-01T13:00:00.1239+01:00".parse().unwrap();
        assert_eq!(format_ms(t), "2026-01-01T12:00:00.123Z");
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
