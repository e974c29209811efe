//! systemd service notifications (`Type=notify`): READY=1 once the
//! listeners are bound and the journal is open, WATCHDOG=1 from the main
//! loop while the daemon is healthy, STOPPING=1 on shutdown. Written to the
//! datagram socket systemd names in `NOTIFY_SOCKET`; a no-op without it.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to send notifications, if systemd asked for them.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// From the environment (`NOTIFY_SOCKET`, a path or `@abstract` name).
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|p| address(&p));
        let socket = target.and_then(|addr| UnixDatagram::unbound().ok().map(|s| (s, addr)));
        Notifier { socket }
    }

    /// Send one notification ("READY=1", …); errors are logged, not fatal.
    pub fn send(&self, state: &str) {
        if let Some((s, addr)) = &self.socket {
            if let Err(e) = s.send_to_addr(state.as_bytes(), addr) {
                log::warn!("cannot notify systemd ({state}): {e}");
            }
        }
    }

    /// How often to ping the watchdog: half of `WATCHDOG_USEC`, if set.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

fn address(path: &str) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok(),
        None => std::os::unix::net::SocketAddr::from_pathname(path).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                address(path.to_str().unwrap()).unwrap(),
            )),
        };
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        assert!(address("@chargegate-test").is_some());
    }
}
