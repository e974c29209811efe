//! The daemon as a systemd service: READY=1, WATCHDOG=1 and STOPPING=1 on
//! the NOTIFY_SOCKET the test provides, SIGHUP survived, a clean exit on
//! SIGTERM, and the unit file passes `systemd-analyze verify`.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::harness::*;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn the_daemon_notifies_systemd_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let cfg = write_config(dir.path(), &config_text(&dir.path().join("data"), None, ""));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chargegate"))
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let sock = tokio::task::spawn_blocking(move || {
        assert_eq!(recv(&sock), "READY=1");
        sock
    })
    .await
    .unwrap();
    // SIGHUP checks the config; it must not stop the daemon.
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let sock = tokio::task::spawn_blocking(move || {
        assert_eq!(recv(&sock), "WATCHDOG=1");
        assert_eq!(recv(&sock), "WATCHDOG=1", "pinged again while healthy");
        sock
    })
    .await
    .unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after SIGHUP"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM drains and exits 0");
    let last = tokio::task::spawn_blocking(move || {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (mut last, mut buf) = (String::new(), [0u8; 256]);
        while let Ok(n) = sock.recv(&mut buf) {
            last = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        last
    })
    .await
    .unwrap();
    assert_eq!(last, "STOPPING=1");
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/chargegate.service"
    ))
    .unwrap();
    for must in [
        "Type=notify",
        "WatchdogSec=",
        "RestartPreventExitStatus=64",
        "StateDirectory=chargegate",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(must), "{must} missing from the unit");
    }
    // verify checks that ExecStart's binary exists: point it at this build.
    let path = dir.path().join("chargegate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/chargegate", env!("CARGO_BIN_EXE_chargegate")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
}

/// Under journald (JOURNAL_STREAM set) log lines go to the journal as
/// structured entries with the charger id as CHARGER_ID. On a machine with
/// no journald (CI's containers), the test listens on journald's socket
/// itself and reads the entries the daemon sends there; with a journald,
/// it asks `journalctl CHARGER_ID=…`.
#[tokio::test]
async fn log_lines_reach_journald_with_the_charger_id_as_a_field() {
    const SOCKET: &str = "/run/systemd/journal/socket";
    let id = format!("CP-J{}", fastrand::u32(..));
    // journald is running when its socket answers.
    let real_journald = UnixDatagram::unbound()
        .and_then(|s| s.connect(SOCKET))
        .is_ok();
    let stand_in = if real_journald {
        None
    } else {
        std::fs::create_dir_all("/run/systemd/journal")
            .expect("can create /run/systemd/journal (root)");
        // A stale socket file from an earlier run would pass for journald.
        let _ = std::fs::remove_file(SOCKET);
        let s = UnixDatagram::bind(SOCKET).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Some(s)
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_text(&dir.path().join("data"), None, ""));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chargegate"))
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env("JOURNAL_STREAM", "0:0")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    use tokio::io::AsyncBufReadExt;
    let line = tokio::time::timeout(WAIT, tokio::io::BufReader::new(out).lines().next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ocpp = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ocpp="))
        .unwrap()
        .to_string();
    let mut cp = Charger::connect(&format!("ws://{ocpp}/ocpp/{id}")).await;
    cp.call("BootNotification", boot()).await;
    match stand_in {
        Some(sock) => {
            let found = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = sock.recv(&mut buf).expect("an entry before the timeout");
                    let fields = journal_fields(&buf[..n]);
                    if fields.get("CHARGER_ID").map(String::as_str) == Some(id.as_str()) {
                        return fields;
                    }
                }
            })
            .await
            .unwrap();
            let _ = std::fs::remove_file(SOCKET);
            assert!(found["MESSAGE"].contains("connected"), "{found:?}");
            assert_eq!(found["SYSLOG_IDENTIFIER"], "chargegate");
        }
        None => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let out = std::process::Command::new("journalctl")
                .args([
                    format!("CHARGER_ID={id}").as_str(),
                    "-o",
                    "cat",
                    "--no-pager",
                ])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("charger {id} connected")), "{text}");
        }
    }
    let _ = child.kill().await;
}

/// Fields of one entry in journald's native protocol: `KEY=value` lines,
/// or `KEY`, a little-endian u64 length and the raw value.
fn journal_fields(mut b: &[u8]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    while !b.is_empty() {
        let nl = b.iter().position(|c| *c == b'\n').unwrap_or(b.len());
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|c| *c == b'=') {
            out.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            b = &b[(nl + 1).min(b.len())..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &b[(nl + 1).min(b.len())..];
            if rest.len() < 8 {
                break;
            }
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = &rest[8..(8 + len).min(rest.len())];
            out.insert(key, String::from_utf8_lossy(value).into_owned());
            b = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    out
}
