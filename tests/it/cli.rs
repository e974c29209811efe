//! The installer's CLI against a real daemon: check-config, status, log.

use serde_json::json;

use crate::harness::*;

#[test]
fn check_config_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_config(
        dir.path(),
        "[ocpp]\nlisten = \"everywhere\"\nfoo = 1\n[api]\nlisten = \"0.0.0.0:80\"\n",
    );
    let (code, _, err) = cli(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(code, 64);
    let file = bad.display().to_string();
    for key in ["ocpp.listen", "ocpp.foo", "api.token"] {
        assert!(
            err.contains(&format!("{file}: {key}:")),
            "{key} not reported:\n{err}"
        );
    }
    let (code, out, _) = cli(&[
        "check-config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/chargegate.toml"),
    ]);
    assert_eq!(code, 0, "the example config is valid");
    assert!(out.contains("OK"));
    // The daemon refuses to start on a bad config, with the same exit code.
    let (code, _, err) = cli(&["--config", bad.to_str().unwrap(), "run"]);
    assert_eq!(code, 64, "{err}");
}

#[tokio::test]
async fn status_and_log_show_what_happened() {
    let token = "test-token-1234";
    // A daemon with a token, and the CLI pointed at it through a config file.
    let dir = tempfile::tempdir().unwrap();
    let api0 = "[api]\nlisten = \"127.0.0.1:0\"\n";
    let base = config_text(&dir.path().join("data"), None, "");
    let text = base.replace(api0, &format!("{api0}token = \"{token}\"\n"));
    let cfg_path = write_config(dir.path(), &text);
    let p = Process::spawn(&cfg_path).await;
    let mut cp = Charger::connect(&format!("ws://{}/ocpp/CP-CLI", p.ocpp)).await;
    cp.call("BootNotification", boot()).await;
    cp.call(
        "StatusNotification",
        json!({"connectorId": 1, "errorCode": "NoError", "status": "SuspendedEVSE"}),
    )
    .await;
    // A charger's text with terminal escapes and a forged log line.
    cp.call(
        "StatusNotification",
        json!({"connectorId": 2, "errorCode": "OtherError", "status": "Faulted",
               "info": "x\u{1b}]0;pwned\u{7}\n2030-01-01T00:00:00Z  CP-X forged"}),
    )
    .await;

    // The CLI reads the API address from the config; here the port is 0, so
    // point it at the bound one.
    let cli_dir = tempfile::tempdir().unwrap();
    let cli_text = text.replace(api0, &format!("[api]\nlisten = \"{}\"\n", p.api));
    let cli_cfg = write_config(cli_dir.path(), &cli_text);
    let c = cli_cfg.to_str().unwrap().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || cli(&["--config", &c, "status"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("CP-CLI") && out.contains("1:SuspendedEVSE") && out.contains("standalone"),
        "{out}"
    );
    let c = cli_cfg.to_str().unwrap().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(&[
            "--config",
            &c,
            "log",
            "--charger",
            "CP-CLI",
            "--since",
            "1h",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("BootNotification")
            && out.contains("StatusNotification connector 1 SuspendedEVSE"),
        "{out}"
    );
    // Shown, not obeyed: no escape reaches the terminal, no forged line.
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("\\u{1b}]0;pwned"), "{out}");
    assert!(
        !out.lines().any(|l| l.starts_with("2030-01-01T00:00:00Z")),
        "{out}"
    );
    let c = cli_cfg.to_str().unwrap().to_string();
    let (_, out, _) = tokio::task::spawn_blocking(move || {
        cli(&[
            "--config",
            &c,
            "log",
            "--json",
            "--kind",
            "BootNotification",
        ])
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["vendor"].as_str()),
        (Some("BootNotification"), Some("TestVendor"))
    );
    // A log cut by --limit says so; --limit 0 shows everything.
    let c = cli_cfg.to_str().unwrap().to_string();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || cli(&["--config", &c, "log", "--limit", "1"]))
            .await
            .unwrap();
    assert_eq!((code, out.lines().count()), (0, 1), "{out}");
    assert!(err.contains("--limit 0"), "the hint: {err:?}");
    let c = cli_cfg.to_str().unwrap().to_string();
    let (_, out, err) =
        tokio::task::spawn_blocking(move || cli(&["--config", &c, "log", "--limit", "0"]))
            .await
            .unwrap();
    assert!(out.lines().count() >= 3 && err.is_empty(), "{out}\n{err}");
    // A reader that goes away is no error (`chargegate log | head -0`).
    let c = cli_cfg.to_str().unwrap().to_string();
    let piped = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg("-c")
            .arg("\"$0\" --config \"$1\" log --limit 0 | head -c0; echo ${PIPESTATUS[0]}")
            .arg(env!("CARGO_BIN_EXE_chargegate"))
            .arg(&c)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout).trim(),
        "0",
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Without the token the API refuses.
    let no_token = base.replace(api0, &format!("[api]\nlisten = \"{}\"\n", p.api));
    let nt_dir = tempfile::tempdir().unwrap();
    let nt = write_config(nt_dir.path(), &no_token);
    let (code, _, err) =
        tokio::task::spawn_blocking(move || cli(&["--config", nt.to_str().unwrap(), "status"]))
            .await
            .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("401") && err.contains("token"), "{err}");
    p.kill9().await;
}

/// `chargegate bench` end to end on a tiny load, flood and paced: it starts
/// its own sink and gateway and prints every figure the README quotes.
#[test]
fn bench_runs_and_prints_its_figures() {
    for rate in ["0", "400"] {
        let (code, out, err) = cli(&[
            "bench",
            "--chargers",
            "2,3",
            "--messages",
            "4",
            "--rounds",
            "2",
            "--journal-events",
            "20",
            "--no-nginx",
            "--rate",
            rate,
        ]);
        assert_eq!(code, 0, "rate {rate}:\n{out}\n{err}");
        for n in [2, 3] {
            assert!(
                out.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{n} |"))),
                "no row for N={n}:\n{out}"
            );
        }
        for figure in [
            "chargegate p99/direct per round: median",
            "us at p50",
            "us/msg",
            "of a core idle",
            "RSS per charger above idle",
            "journal durable events/s",
        ] {
            assert!(out.contains(figure), "rate {rate}: no {figure:?}:\n{out}");
        }
        let paced = out.contains("paced at 400 heartbeats/s");
        assert_eq!(paced, rate != "0", "load mode not stated:\n{out}");
    }
    // What sites send (a transaction each, then Heartbeat and MeterValues
    // in turn), with a second gateway binary measured in the same rounds.
    let (code, out, err) = cli(&[
        "bench",
        "--chargers",
        "2",
        "--messages",
        "4",
        "--rounds",
        "2",
        "--journal-events",
        "20",
        "--no-nginx",
        "--mix",
        "transactions",
        "--baseline",
        env!("CARGO_BIN_EXE_chargegate"),
        "--mirror-delay-ms",
        "200",
    ]);
    assert_eq!(code, 0, "transactions mix:\n{out}\n{err}");
    assert!(
        out.contains("cg+mirror  p99/direct per round: median"),
        "no figures with a slow mirror:\n{out}"
    );
    assert!(out.contains("Transactions mix"), "{out}");
    assert!(
        out.contains("baseline   p99/direct per round: median"),
        "no baseline figures:\n{out}"
    );
    // Storage wear: bytes written per journaled event, two builds side by side.
    let (code, out, err) = cli(&[
        "bench",
        "--wear",
        "--wear-chargers",
        "2",
        "--wear-interval-secs",
        "0.5",
        "--wear-secs",
        "2",
        "--baseline",
        env!("CARGO_BIN_EXE_chargegate"),
    ]);
    assert_eq!(code, 0, "wear:\n{out}\n{err}");
    for name in ["wear ", "wear-baseline "] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(name) && l.contains("B per event")),
            "no wear figures for {name:?}:\n{out}"
        );
    }
    let (code, _, err) = cli(&["bench", "--rate=-1", "--no-nginx"]);
    assert_ne!(code, 0);
    assert!(err.contains("--rate"), "{err}");
}

/// The README's test command provisions a fresh machine: run with stand-ins
/// for apt-get, dpkg, sudo, pip and cargo on PATH (a non-root user on a
/// Debian machine missing chromium, mosquitto and the `ocpp` package), it
/// installs exactly what is missing, through sudo, then runs `cargo test`
/// with the arguments given; with everything present it only runs `cargo test`.
#[test]
fn the_readme_test_command_installs_what_is_missing() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    assert!(
        readme.contains("\n    scripts/test\n"),
        "README's test command"
    );
    let ci = std::fs::read_to_string(format!("{root}/.ci/run")).unwrap();
    assert!(ci.contains("\nbash scripts/test\n"), ".ci/run runs it");

    let run = |installed: bool| -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let log = dir.path().join("log");
        let l = log.display();
        let have = if installed {
            "exit 0"
        } else {
            "case \"$2\" in chromium|mosquitto) exit 1;; *) exit 0;; esac"
        };
        let ocpp = if installed { 0 } else { 1 };
        let stubs = [
            ("id", "echo 1000".to_string()),
            ("dpkg", have.to_string()),
            ("apt-get", format!("echo \"apt-get $*\" >> {l}")),
            ("sudo", format!("echo sudo >> {l}; exec \"$@\"")),
            ("systemd-analyze", "exit 0".to_string()),
            (
                "python3",
                format!(
                    "case \"$*\" in '-m pip --version') exit 0;; '-') cat >/dev/null; exit {ocpp};; \
                     *) echo \"python3 $*\" >> {l};; esac"
                ),
            ),
            ("cargo", format!("echo \"cargo $*\" >> {l}")),
        ];
        for (name, body) in stubs {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            let mut perm = std::fs::metadata(&p).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            std::fs::set_permissions(&p, perm).unwrap();
        }
        let out = std::process::Command::new("bash")
            .arg(format!("{root}/scripts/test"))
            .args(["--test", "it"])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };

    let fresh = run(false);
    let installs: Vec<&String> = fresh.iter().filter(|l| l.contains("install")).collect();
    assert!(
        fresh.contains(&"sudo".to_string()),
        "apt-get through sudo: {fresh:?}"
    );
    assert!(
        installs
            .iter()
            .any(|l| l.starts_with("apt-get install") && l.ends_with("chromium mosquitto")),
        "installs exactly the missing packages: {fresh:?}"
    );
    assert!(
        installs.iter().any(
            |l| l.starts_with("python3 -m pip install") && l.contains("tests/requirements.txt")
        ),
        "installs the ocpp package: {fresh:?}"
    );
    assert_eq!(
        fresh.last().map(String::as_str),
        Some("cargo test --test it")
    );

    let ready = run(true);
    assert_eq!(
        ready,
        vec!["cargo test --test it".to_string()],
        "nothing to install"
    );
}

/// The CLI without surprises: check-config takes --config like every other
/// command, `action --help` describes every argument, a URL problem is said
/// precisely, and a busy port is named once with the setting that opens it.
#[test]
fn the_cli_says_what_it_means() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[upstream]\nurl = \"ws://x\"\n");
    let f = cfg.to_str().unwrap();
    for args in [
        vec!["check-config", f],
        vec!["--config", f, "check-config"],
        vec!["check-config", "--config", f],
    ] {
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("OK") && out.contains("ws://x"), "{out}");
    }
    let bad = write_config(
        dir.path(),
        "[upstream]\nurl = \"http://cloud.example.com/ocpp\"\n",
    );
    let (code, _, err) = cli(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(
        err.contains("upstream.url: expected ws:// or wss://, not http://"),
        "{err}"
    );

    // A key that moved: still read, and check-config says where it goes.
    let moved = write_config(dir.path(), "[api]\nforce_stop_wait_secs = 5\n");
    let (code, _, err) = cli(&["check-config", moved.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning:")
            && err.contains("api.force_stop_wait_secs: deprecated: move it to [actions]"),
        "{err}"
    );

    let (_, help, _) = cli(&["action", "--help"]);
    for (arg, words) in [
        ("<NAME>", "The action: reboot"),
        ("<CHARGER>", "The charge point id"),
        ("--connector", "the EVSE for OCPP 2.0.1"),
        ("--id-tag", "the id tag to start with"),
        ("--json", "as JSON"),
    ] {
        // Its entry: the line that starts with it and the lines below
        // until the next argument.
        let lines: Vec<&str> = help.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(arg))
            .unwrap_or_else(|| panic!("no {arg}: {help}"));
        let entry: Vec<&str> = std::iter::once(lines[at])
            .chain(lines[at + 1..].iter().copied().take_while(|l| {
                let t = l.trim_start();
                !(t.is_empty() || t.starts_with('<') || t.starts_with('-'))
            }))
            .collect();
        assert!(
            entry.join(" ").contains(words),
            "{arg} undescribed:\n{help}"
        );
    }

    // A busy diagnostics port: said once, with the setting.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let text = config_text(
        &dir.path().join("data"),
        None,
        &format!("[diagnostics]\nlisten = \"{addr}\"\n"),
    );
    let cfg = write_config(dir.path(), &text);
    let (code, _, err) = cli(&["--config", cfg.to_str().unwrap(), "run"]);
    assert_ne!(code, 0);
    assert!(err.contains("diagnostics.listen"), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "said once: {err}");
}
