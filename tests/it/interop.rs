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
