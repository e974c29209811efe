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
