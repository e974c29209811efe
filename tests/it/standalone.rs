//! With no cloud configured the gateway is the charger's central system.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn standalone_gateway_answers_a_whole_session_and_journals_the_seed_events() {
    let gw = Gateway::start(
        None,
        "[offline]\nauthorize = \"reject_unknown\"\nid_tags = [\"GOODTAG\"]\n",
    )
    .await;
    let mut cp = Charger::connect(&gw.url("CP-S")).await;
    let a = cp.call("BootNotification", boot()).await;
    assert_eq!(
        (a[2]["status"].as_str(), a[2]["interval"].as_i64()),
        (Some("Accepted"), Some(300))
    );
    assert!(a[2]["currentTime"].as_str().unwrap().ends_with('Z'));
    let a = cp.call("Heartbeat", json!({})).await;
    assert!(a[2]["currentTime"].is_string());
    let a = cp.call("Authorize", json!({"idTag": "STRANGER"})).await;
    assert_eq!(a[2]["idTagInfo"]["status"], "Invalid");
    let a = cp.call("Authorize", json!({"idTag": "GOODTAG"})).await;
    assert_eq!(a[2]["idTagInfo"]["status"], "Accepted");
    for status in [
        "Preparing",
        "Charging",
        "SuspendedEVSE",
        "SuspendedEV",
        "Charging",
    ] {
        let a = cp
            .call(
                "StatusNotification",
                json!({"connectorId": 1, "errorCode": "NoError", "status": status}),
            )
            .await;
        assert_eq!(a[2], json!({}));
    }
    let a = cp.call("StartTransaction", json!({"connectorId": 1, "idTag": "GOODTAG", "meterStart": 1000, "timestamp": "2026-01-01T10:00:00Z"})).await;
    let tx = a[2]["transactionId"].as_i64().unwrap();
    assert!(tx < 0);
    let mv = json!({"connectorId": 1, "transactionId": tx, "meterValue": [{"timestamp": "2026-01-01T10:05:00Z", "sampledValue": [{"value": "1500", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]});
    assert_eq!(cp.call("MeterValues", mv).await[2], json!({}));
    let a = cp.call("StopTransaction", json!({"transactionId": tx, "meterStop": 2000, "timestamp": "2026-01-01T11:00:00Z", "reason": "EVDisconnected", "idTag": "GOODTAG"})).await;
    assert_eq!(a[2]["idTagInfo"]["status"], "Accepted");
    let a = cp.call("DataTransfer", json!({"vendorId": "acme"})).await;
    assert_eq!(a[2]["status"], "UnknownVendorId");
    let a = cp.call("FancyNewAction", json!({})).await;
    assert_eq!(
        (a[0].as_i64(), a[2].as_str()),
        (Some(4), Some("NotImplemented"))
    );

    // Everything acknowledged is already in the journal (committed before the answer).
    let kinds: Vec<String> = gw
        .events("CP-S")
        .iter()
        .map(|r| r.event.kind().to_string())
        .collect();
    for k in [
        "Connect",
        "BootNotification",
        "Authorize",
        "StatusNotification",
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    let ev = gw
        .wait_event("CP-S", "StatusNotification", |e| {
            e["status"] == "SuspendedEVSE"
        })
        .await;
    assert_eq!(ev["connector"], 1);
    let ev = gw.wait_event("CP-S", "StopTransaction", |_| true).await;
    assert_eq!(
        (
            ev["transaction_id"].as_i64(),
            ev["meter_stop"].as_i64(),
            ev["reason"].as_str()
        ),
        (Some(tx), Some(2000), Some("EVDisconnected"))
    );
    let ev = gw.wait_event("CP-S", "MeterValues", |_| true).await;
    assert_eq!(ev["energy_wh"], 1500.0);
    let st = gw.journal().state();
    let c = &st.chargers["CP-S"];
    assert_eq!(c.boot.as_ref().unwrap().firmware.as_deref(), Some("1.2.3"));
    assert_eq!(c.connectors[&1].status, "Charging");
    assert!(c.transactions.is_empty());
}

#[tokio::test]
async fn the_simulator_runs_sessions_against_the_gateway() {
    let gw = Gateway::start(None, "").await;
    let opts = chargegate::sim::SimOptions {
        meter_interval: std::time::Duration::from_millis(50),
        meter_values_per_session: 3,
        idle: std::time::Duration::from_millis(50),
        duration: Some(std::time::Duration::from_secs(2)),
        ..chargegate::sim::SimOptions::new(format!("ws://{}/ocpp", gw.ocpp), 3)
    };
    let stats = chargegate::sim::run(opts).await;
    assert!(stats.sessions.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    for n in 1..=3 {
        let id = format!("SIM-{n}");
        gw.wait_event(&id, "StopTransaction", |e| e["reason"] == "Local")
            .await;
        gw.wait_event(&id, "BootNotification", |e| e["model"] == "Simulator")
            .await;
        // The simulator leaves with a WebSocket close, not a reset.
        gw.wait_event(&id, "Disconnect", |e| {
            e["link"] == "charger" && e["reason"] == "charger closed the connection"
        })
        .await;
    }
}
