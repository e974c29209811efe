//! Interop with an OCPP implementation we did not write: the Python `ocpp`
//! package (schema-validating) as the charger and as the CSMS, with the
//! gateway between them.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::*;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/ocpp_peer.py");

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn python_ocpp_charger_and_csms_through_the_gateway() {
    let mut csms = tokio::process::Command::new("python3")
        .args([PEER, "csms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (set-up: python3 -m pip install -r tests/requirements.txt)");
    let mut out = BufReader::new(csms.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, out.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("the Python CSMS started; is the `ocpp` package installed?");
    let port: u16 = first
        .strip_prefix("PORT ")
        .expect("PORT line")
        .parse()
        .unwrap();

    let gw = Gateway::start(Some(&format!("ws://127.0.0.1:{port}/ocpp")), "").await;
    let charger = tokio::process::Command::new("python3")
        .args([PEER, "charger", &format!("ws://{}/ocpp", gw.ocpp), "PY-1"])
        .output();
    let charger = tokio::time::timeout(std::time::Duration::from_secs(30), charger)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&charger.stdout);
    assert!(
        charger.status.success(),
        "python charger failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&charger.stderr)
    );
    let got = lines(&stdout);
    let find = |k: &str, v: &str| {
        got.iter()
            .find(|l| l[k] == v)
            .cloned()
            .unwrap_or_else(|| panic!("no {k}={v} in {got:?}"))
    };
    assert_eq!(find("result", "BootNotification")["status"], "Accepted");
    assert_eq!(
        find("result", "StartTransaction")["transaction_id"],
        777,
        "the cloud's transaction id reached the charger"
    );
    assert_eq!(
        find("charger_got", "Reset")["type"],
        "Soft",
        "the cloud's Reset reached the charger"
    );

    // The CSMS side saw every message, and the charger's answer to Reset.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.iter().any(|l: &Value| l.get("reset_result").is_some())
        || !seen
            .iter()
            .any(|l: &Value| l["csms_got"] == "StopTransaction")
    {
        let line = tokio::time::timeout_at(deadline, out.next_line())
            .await
            .expect("CSMS output in time")
            .unwrap()
            .expect("CSMS running");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            seen.push(v);
        }
    }
    assert!(seen
        .iter()
        .any(|l| l["csms_connected"] == "PY-1" && l["subprotocol"] == "ocpp1.6"));
    for action in [
        "BootNotification",
        "Heartbeat",
        "Authorize",
        "StatusNotification",
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ] {
        assert!(
            seen.iter().any(|l| l["csms_got"] == action),
            "CSMS did not get {action}: {seen:?}"
        );
    }
    assert!(seen.iter().any(|l| l["reset_result"] == "Accepted"));

    // And the journal has it all, answered by the cloud.
    let ev = gw.wait_event("PY-1", "StartTransaction", |_| true).await;
    assert_eq!(
        (ev["transaction_id"].as_i64(), ev["answered_by"].as_str()),
        (Some(777), Some("cloud"))
    );
    let ev = gw
        .wait_event("PY-1", "RemoteAction", |e| e["action"] == "Reset")
        .await;
    assert_eq!(ev["result"]["status"], "Accepted");
    gw.wait_event("PY-1", "BootNotification", |e| e["vendor"] == "PyVendor")
        .await;
    let _ = csms.kill().await;
}

/// The charging profiles the gateway builds, checked by the `ocpp`
/// package against the official OCPP 1.6 JSON schemas.
#[tokio::test]
async fn our_charging_profiles_pass_the_official_ocpp_schemas() {
    use chargegate::smart::profile::{self, Electrical, RateUnit, Slot};
    use chargegate::smart::schedule::{self, Rule, Schedule};
    use jiff::{SignedDuration, Timestamp};
    use tokio::io::AsyncWriteExt;

    let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let now: Timestamp = "2030-03-30T20:15:00Z".parse().unwrap();
    let sched = Schedule {
        name: "off-peak".into(),
        rules: vec![
            Rule {
                days: schedule::parse_days("mon-fri").unwrap(),
                from: 22 * 60,
                to: 6 * 60,
                max_current: Some(16.0),
            },
            Rule {
                days: schedule::parse_days("sat,sun").unwrap(),
                from: 0,
                to: 1440,
                max_current: None,
            },
        ],
    };
    let week = schedule::week_start(now, &tz);
    let steps: Vec<(Timestamp, f64)> = sched
        .steps(week, week + schedule::WEEK, &tz)
        .into_iter()
        .map(|(t, a)| (t, a.amps(32.0)))
        .collect();
    let amps = Electrical {
        unit: RateUnit::Amps,
        phases: 3,
        voltage: 230.0,
    };
    let watts = Electrical {
        unit: RateUnit::Watts,
        phases: 1,
        voltage: 230.0,
    };
    let slot = |id, level| Slot {
        id,
        stack_level: level,
        purpose: "ChargePointMaxProfile".into(),
    };
    let mut calls = vec![
        (
            "SetChargingProfile",
            profile::weekly(&slot(870_001, 8), &amps, week, &steps),
        ),
        (
            "SetChargingProfile",
            profile::weekly(&slot(870_001, 8), &watts, week, &steps),
        ),
        (
            "SetChargingProfile",
            profile::absolute(
                &slot(870_002, 9),
                &amps,
                now,
                SignedDuration::from_secs(300),
                &[(now, 0.0)],
            ),
        ),
        (
            "SetChargingProfile",
            profile::absolute(
                &Slot {
                    id: 870_002,
                    stack_level: 9,
                    purpose: "TxDefaultProfile".into(),
                },
                &watts,
                now,
                SignedDuration::from_secs(300),
                &[(now, 13.3), (now + SignedDuration::from_secs(120), 6.0)],
            ),
        ),
        ("ClearChargingProfile", serde_json::json!({ "id": 870_002 })),
    ];
    // And one broken on purpose: the validator must say no.
    let mut broken = calls[2].1.clone();
    broken["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] =
        "lots".into();
    calls.push(("SetChargingProfile", broken));
    let input: String = calls.iter().map(|(a, p)| format!("{a}\t{p}\n")).collect();

    let mut child = tokio::process::Command::new("python3")
        .args([PEER, "validate"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (set-up: python3 -m pip install -r tests/requirements.txt)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT * 3, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let verdicts = lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(verdicts.len(), calls.len(), "{verdicts:?}");
    for (i, v) in verdicts.iter().enumerate() {
        let expect_ok = i + 1 < calls.len();
        assert_eq!(v["ok"], expect_ok, "{}: {v}", calls[i].1);
    }
}
