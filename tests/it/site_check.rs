//! The site commissioning report against simulated chargers configured
//! differently (the built-in `sim`): each finding for the charger that has
//! the problem and not for the others, a charger that never answers, a
//! configured charger that never came, the report's JSON schema, the CLI's
//! exit code.

use std::collections::BTreeSet;
use std::time::Duration;

use chargegate::sim::SimOptions;
use serde_json::Value;

use crate::harness::*;

/// Run one simulated charger `id` (prefix + "1") with `tweak` applied.
fn sim(gw: &Gateway, prefix: &str, tweak: impl FnOnce(&mut SimOptions)) {
    let mut opts = SimOptions {
        prefix: prefix.into(),
        idle: Duration::from_secs(3600),
        duration: Some(Duration::from_secs(60)),
        ..SimOptions::new(format!("ws://{}/ocpp", gw.ocpp), 1)
    };
    tweak(&mut opts);
    tokio::spawn(chargegate::sim::run(opts));
}

fn problems(report: &Value, id: &str) -> BTreeSet<String> {
    let c = report["chargers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in the report"));
    c["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "ok")
        .map(|f| {
            format!(
                "{} {}",
                f["severity"].as_str().unwrap(),
                f["topic"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn the_site_check_finds_each_problem_where_it_is() {
    let gw = Gateway::start(
        None,
        r#"
[[schedule]]
name = "daytime"
chargers = ["*"]
[[schedule.window]]
from = "06:00"
to = "22:00"
[[charger]]
id = "SITE-GHOST"
"#,
    )
    .await;
    sim(&gw, "OK-", |_| {});
    sim(&gw, "SLOW-", |o| {
        o.config
            .push(("MeterValueSampleInterval".into(), "900".into()))
    });
    sim(&gw, "SKEW-", |o| o.clock_offset_s = 3600);
    sim(&gw, "DUMB-", |o| {
        o.config.push((
            "SupportedFeatureProfiles".into(),
            "Core,RemoteTrigger".into(),
        ))
    });
    sim(&gw, "NOBILL-", |o| {
        o.config.push((
            "MeterValuesSampledData".into(),
            "Power.Active.Import".into(),
        ))
    });
    sim(&gw, "MUTE-", |o| o.silent = true);
    for id in ["OK-1", "SLOW-1", "SKEW-1", "DUMB-1", "NOBILL-1", "MUTE-1"] {
        gw.wait_event(id, "BootNotification", |_| true).await;
    }

    let api = chargegate::client::ApiClient {
        addr: gw.running.as_ref().unwrap().api_addr,
        token: None,
    };
    let report: Value = api.get("/api/v1/site-check?timeout_secs=3").await.unwrap();
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(problems(&report, "OK-1"), set(&[]), "{report:#}");
    assert_eq!(problems(&report, "SLOW-1"), set(&["warning meter values"]));
    assert_eq!(problems(&report, "SKEW-1"), set(&["problem clock"]));
    assert_eq!(
        problems(&report, "DUMB-1"),
        set(&["problem smart charging"])
    );
    assert_eq!(
        problems(&report, "NOBILL-1"),
        set(&["problem meter values"])
    );
    assert_eq!(
        problems(&report, "MUTE-1"),
        set(&["problem config", "warning clock"]),
        "a charger that never answers is a finding, not a hang"
    );
    assert_eq!(problems(&report, "SITE-GHOST"), set(&["problem link"]));
    assert!(report["problems"].as_u64().unwrap() >= 5, "{report:#}");
    assert!(
        report["took_ms"].as_u64().unwrap() < 30_000,
        "chargers are asked in parallel"
    );
    // Nothing was changed on a charger: only reads went out.
    for id in ["OK-1", "MUTE-1"] {
        for r in gw.events(id) {
            if let chargegate::event::Event::RemoteAction { action, source, .. } = &r.event {
                if *source == chargegate::event::Source::Api {
                    assert!(
                        ["GetConfiguration", "TriggerMessage"].contains(&action.as_str()),
                        "{action}"
                    );
                }
            }
        }
    }

    // The report's JSON schema (docs/site-check.schema.json), checked by
    // the Python `jsonschema` package the interop tests install.
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/site-check.schema.json");
    let check = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys,jsonschema; jsonschema.validate(json.load(sys.stdin), json.load(open(sys.argv[1]))); print('valid')",
            schema,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = {
        let mut child = check;
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(report.to_string().as_bytes())
            .await
            .unwrap();
        drop(stdin);
        child.wait_with_output().await.unwrap()
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "valid",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The CLI: words for people, exit code 1 for scripts.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &format!("[api]\nlisten = \"{}\"\n", api.addr));
    let c = cfg.to_str().unwrap().to_string();
    let (code, text, err) =
        tokio::task::spawn_blocking(move || cli(&["--config", &c, "site-check", "--timeout", "3"]))
            .await
            .unwrap();
    assert_eq!(code, 1, "{text}\n{err}");
    assert!(text.contains("NOT READY"), "{text}");
    assert!(
        text.contains(
            "→ chargegate action change-config SLOW-1 --key MeterValueSampleInterval --value 60"
        ),
        "{text}"
    );
}
