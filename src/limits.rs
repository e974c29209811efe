//! Limits that keep one peer from hurting the others: connections per
//! source address and in total, and a message rate per connection (a token
//! bucket). Pure bookkeeping; the server and the session apply it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Open connections, by source address and in total.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Mutex<ConnCount>>,
}

#[derive(Default)]
struct ConnCount {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    /// Refusals reported by address, so that a flood of refusals does not
    /// flood the journal too.
    reported: Repeats<(IpAddr, String, Option<String>)>,
    /// Failed logins by address: (count in the window, window start).
    failed: HashMap<IpAddr, (u32, Instant)>,
    /// Failed logins reported by address.
    failed_reported: Repeats<IpAddr>,
}

/// Something that repeats (a refusal, a protocol error) is reported once
/// per minute per key, and the report says how many were not. Bounded:
/// past 10,000 keys it starts over.
#[derive(Debug)]
pub struct Repeats<K> {
    seen: HashMap<K, (Instant, u64)>,
}

impl<K> Default for Repeats<K> {
    fn default() -> Self {
        Repeats {
            seen: HashMap::new(),
        }
    }
}

/// How often one key is reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

impl<K: std::hash::Hash + Eq> Repeats<K> {
    /// What was counted and not reported yet, by key; forgotten.
    pub fn drain(&mut self) -> Vec<(K, u64)> {
        self.seen
            .drain()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(k, (_, n))| (k, n))
            .collect()
    }

    /// `Some(n)`: report it now, with `n` like it not reported since the
    /// last report. `None`: counted, not reported.
    pub fn report(&mut self, key: K, now: Instant) -> Option<u64> {
        if self.seen.len() >= 10_000 && !self.seen.contains_key(&key) {
            self.seen.clear();
        }
        match self.seen.get_mut(&key) {
            Some((at, n)) if now.duration_since(*at) < REPORT_EVERY => {
                *n += 1;
                None
            }
            Some((at, n)) => {
                *at = now;
                Some(std::mem::take(n))
            }
            None => {
                self.seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// Failed logins an address may have in [`LOGIN_WINDOW`] before its next
/// attempts are refused without checking a password (a hashed one costs
/// tens of ms of PBKDF2 on a Pi).
pub const LOGIN_BUDGET: u32 = 10;
/// The window of [`LOGIN_BUDGET`].
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TooMany {
    Total(usize),
    FromAddress(usize),
}

impl std::fmt::Display for TooMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TooMany::Total(n) => write!(f, "too many connections ({n} open, ocpp.max_connections)"),
            TooMany::FromAddress(n) => {
                write!(f, "too many connections from this address ({n} open, ocpp.max_connections_per_ip)")
            }
        }
    }
}

/// Holds a connection's place; dropping it frees the place.
pub struct Admitted {
    conns: Connections,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.conns.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.ip);
            }
        }
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnCount> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a connection from `ip` if both limits allow it.
    pub fn admit(
        &self,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Admitted, TooMany> {
        let mut c = self.lock();
        if c.total >= max_total {
            return Err(TooMany::Total(c.total));
        }
        let from = c.by_ip.get(&ip).copied().unwrap_or(0);
        if from >= max_per_ip {
            return Err(TooMany::FromAddress(from));
        }
        c.total += 1;
        *c.by_ip.entry(ip).or_insert(0) += 1;
        Ok(Admitted {
            conns: self.clone(),
            ip,
        })
    }

    /// Whether `ip` spent its failed-login budget: refuse it before any
    /// password is checked.
    pub fn login_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let c = self.lock();
        c.failed.get(&ip).is_some_and(|(n, since)| {
            *n >= LOGIN_BUDGET && now.duration_since(*since) < LOGIN_WINDOW
        })
    }

    /// Count a failed login from `ip`.
    pub fn login_failed(&self, ip: IpAddr, now: Instant) {
        let mut c = self.lock();
        if c.failed.len() > 10_000 {
            c.failed.clear();
        }
        let e = c.failed.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= LOGIN_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
    }

    /// Whether a failed login from `ip` is to be journaled (once a minute
    /// per address; apart from other refusals, which keep their own turn),
    /// and how many were not since.
    pub fn report_login_failure(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        self.lock().failed_reported.report(ip, now)
    }

    /// Whether a refusal from `ip` is to be journaled (once a minute per
    /// address, kind of refusal and configured charger), and how many
    /// were not since. The kind is the reason without what the peer chose
    /// (quoted names, numbers), so a peer cannot make every refusal new.
    pub fn report_refusal(
        &self,
        ip: IpAddr,
        reason: &str,
        charger: Option<&str>,
        now: Instant,
    ) -> Option<u64> {
        let key = (ip, template(reason), charger.map(str::to_string));
        self.lock().reported.report(key, now)
    }
}

/// A message without what varies: quoted parts and digits dropped, and
/// at most 64 characters.
fn template(reason: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for ch in reason.chars() {
        match ch {
            '"' => quoted = !quoted,
            _ if quoted || ch.is_ascii_digit() => {}
            _ => out.push(ch),
        }
        if out.len() >= 64 {
            break;
        }
    }
    out
}

/// A token bucket: `rate` messages a second, bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct Rate {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    /// Messages refused since the bucket last had room.
    pub refused: u64,
}

impl Rate {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Rate {
        Rate {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            at: now,
            refused: 0,
        }
    }

    /// Take one message's token; false when over the rate.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }

    /// A peer that keeps sending into a full bucket (another burst's worth
    /// refused in a row) is not a charger having a moment; it gets closed.
    pub fn abusive(&self) -> bool {
        self.refused as f64 > self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_places_are_counted_and_freed() {
        let c = Connections::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = c.admit(a, 3, 2).unwrap();
        let _two = c.admit(a, 3, 2).unwrap();
        assert_eq!(c.admit(a, 3, 2).err(), Some(TooMany::FromAddress(2)));
        let _three = c.admit(b, 3, 2).unwrap();
        assert_eq!(c.admit(b, 3, 2).err(), Some(TooMany::Total(3)));
        drop(one);
        assert!(
            c.admit(a, 3, 2).is_ok(),
            "a place freed when a connection ends"
        );
        let now = Instant::now();
        let r = |ip, secs| {
            let why = format!("unknown charge point \"CP-{secs}\"");
            c.report_refusal(ip, &why, None, now + Duration::from_secs(secs))
        };
        assert_eq!(r(a, 0), Some(0));
        assert_eq!(r(a, 5), None);
        assert_eq!(r(a, 6), None);
        assert_eq!(
            r(a, 61),
            Some(2),
            "reported again a minute later, with the count of the others"
        );
        assert_eq!(r(b, 7), Some(0), "each address apart");
        let other = c.report_refusal(a, "bad subprotocol", Some("CP-1"), now);
        assert_eq!(other, Some(0), "each kind of refusal apart");
    }

    #[test]
    fn token_bucket_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut r = Rate::new(10, 5, t0);
        assert!((0..5).all(|_| r.take(t0)), "a burst of 5");
        assert!(!r.take(t0));
        assert!(!r.abusive());
        assert!(r.take(t0 + Duration::from_millis(100)), "refilled at 10/s");
        for _ in 0..6 {
            r.take(t0 + Duration::from_millis(100));
        }
        assert!(r.abusive(), "kept sending into a full bucket");
        assert!(r.take(t0 + Duration::from_secs(2)));
        assert_eq!(r.refused, 0);
    }
}
