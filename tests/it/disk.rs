//! The data directory stays within `[journal] max_size_mb` (plus the
//! slack the README documents) under floods, and a flood from one charger
//! does not take another's history.

use serde_json::json;

use crate::harness::*;

/// What the README allows over `max_size_mb`: the database's own pages and
/// the segment being written.
const SLACK: u64 = 1 << 20;

fn big_meter_values(tx: i64, i: usize) -> serde_json::Value {
    let sampled: Vec<_> = (0..150)
        .map(|k| {
            json!({"value": format!("{}", i * 1000 + k), "measurand": "Energy.Active.Import.Register",
                   "unit": "Wh", "context": "Sample.Periodic", "location": "Outlet"})
        })
        .collect();
    json!({"connectorId": 1, "transactionId": tx,
           "meterValue": [{"timestamp": "2026-12-01T00:00:00Z", "sampledValue": sampled}]})
}

#[tokio::test]
async fn floods_keep_the_data_directory_within_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The cloud is down: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cloud = format!("ws://{}/ocpp", dead.local_addr().unwrap());
    drop(dead);
    let extra =
        "[ocpp]\nrate_limit_per_sec = 0\n[journal]\nmax_size_mb = 1\ncommit_interval_secs = 0\n";
    let gw = Gateway::start_in(dir, Some(&cloud), extra).await;
    let mut peak = 0;
    let mut measure = || {
        let now = chargegate::journal::disk_bytes(&data);
        peak = peak.max(now);
        now
    };

    let mut quiet = Charger::connect(&gw.url("CP-QUIET")).await;
    let boot = json!({"chargePointVendor": "V", "chargePointModel": "Quiet"});
    assert_eq!(quiet.call("BootNotification", boot).await[0], 3);

    // Large MeterValues with the cloud down: queued (the gateway answers)
    // until the queue holds half the limit, then refused with the
    // CALLERROR the charger retries later.
    let mut cp = Charger::connect(&gw.url("CP-FLOOD")).await;
    let start = json!({"connectorId": 1, "idTag": "T", "meterStart": 0,
                       "timestamp": "2026-12-01T00:00:00Z"});
    let a = cp.call("StartTransaction", start).await;
    let tx = a[2]["transactionId"].as_i64().expect("answered locally");
    let (mut queued, mut refused) = (0, 0);
    for i in 0..200 {
        let a = cp.call("MeterValues", big_meter_values(tx, i)).await;
        match a[0].as_i64() {
            Some(3) => queued += 1,
            Some(4) => {
                assert_eq!(a[2], "InternalError", "{a}");
                refused += 1;
            }
            _ => panic!("{a}"),
        }
        measure();
    }
    assert!(
        queued > 5 && refused > 100,
        "{queued} queued, {refused} refused"
    );

    // Refused handshakes and binary frames.
    for _ in 0..300 {
        let url = gw.url("CP-NOISE");
        assert_eq!(
            connect_status(&url, Some("ocpp1.5"), None).await.err(),
            Some(400)
        );
    }
    measure();
    use futures_util::SinkExt;
    let mut noisy = Charger::connect(&gw.url("CP-BINARY")).await;
    for i in 0..3_000u32 {
        let msg = tokio_tungstenite::tungstenite::Message::binary(i.to_le_bytes().repeat(256));
        noisy.ws.send(msg).await.unwrap();
    }
    assert_eq!(noisy.call("Heartbeat", json!({})).await[0], 3);
    // Many connector ids: the live state keeps OCPP's, not the charger's.
    for connector in 0..2_000 {
        let st = json!({"connectorId": connector, "errorCode": "NoError", "status": "Available"});
        noisy.call("StatusNotification", st).await;
    }
    measure();

    let limit = 1 << 20;
    assert!(
        peak <= limit + SLACK,
        "data directory peaked at {peak} bytes, limit {limit} + {SLACK}"
    );
    let refusals = gw
        .journal()
        .query(&chargegate::journal::Query {
            kinds: vec!["Refused".into()],
            ..Default::default()
        })
        .unwrap();
    assert!(refusals.len() <= 3, "{} refusals journaled", refusals.len());
    let state = gw.journal().state();
    assert!(state.chargers["CP-BINARY"].connectors.len() <= 65);
    assert!(
        gw.events("CP-QUIET")
            .iter()
            .any(|r| r.event.kind() == "BootNotification"),
        "the quiet charger keeps its history"
    );
    println!("data directory peak: {peak} bytes (limit {limit})");
}
