//! The journal after the daemon is killed with SIGKILL: a real child
//! process, killed right after the charger got its answers, restarted on
//! the same data directory, several times.

use serde_json::json;

use chargegate::client::ApiClient;
use chargegate::event::Record;

use crate::harness::*;

#[tokio::test]
async fn acknowledged_events_survive_kill_9_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_text(&dir.path().join("data"), None, ""));
    let mut acknowledged: Vec<(String, i64)> = Vec::new(); // (kind, transaction id)
    let mut tx_ids = Vec::new();
    for cycle in 0..5 {
        let p = Process::spawn(&cfg).await;
        let mut cp = Charger::connect(&format!("ws://{}/ocpp/CP-K9", p.ocpp)).await;
        assert_eq!(
            cp.call("BootNotification", boot()).await[2]["status"],
            "Accepted"
        );
        let a = cp.call("StartTransaction", json!({"connectorId": 1, "idTag": "T", "meterStart": cycle * 100, "timestamp": "2026-01-01T00:00:00Z"})).await;
        let tx = a[2]["transactionId"].as_i64().unwrap();
        acknowledged.push(("StartTransaction".into(), tx));
        tx_ids.push(tx);
        for k in 0..5 {
            let mv = json!({"connectorId": 1, "transactionId": tx, "meterValue": [{"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": (cycle * 100 + k).to_string()}]}]});
            assert_eq!(cp.call("MeterValues", mv).await[2], json!({}));
            acknowledged.push(("MeterValues".into(), tx));
        }
        let a = cp.call("StopTransaction", json!({"transactionId": tx, "meterStop": cycle * 100 + 50, "timestamp": "2026-01-01T00:00:00Z"})).await;
        assert_eq!(a[0], 3);
        acknowledged.push(("StopTransaction".into(), tx));
        // Killed at once, with the charger still connected: no clean shutdown.
        p.kill9().await;

        let p = Process::spawn(&cfg).await;
        let api = ApiClient {
            addr: p.api,
            token: None,
        };
        let records: Vec<Record> = api
            .get("/api/v1/events?charger=CP-K9&limit=100000")
            .await
            .unwrap();
        let stored: Vec<(String, i64)> = records
            .iter()
            .filter_map(|r| {
                let v = serde_json::to_value(r).unwrap();
                v["transaction_id"]
                    .as_i64()
                    .map(|t| (r.event.kind().to_string(), t))
            })
            .collect();
        assert_eq!(
            stored, acknowledged,
            "cycle {cycle}: every acknowledged message, in order, once"
        );
        let status: chargegate::api::Status = api.get("/api/v1/status").await.unwrap();
        let c = status
            .chargers
            .iter()
            .find(|c| c.state.id == "CP-K9")
            .unwrap();
        assert!(!c.state.charger_link.up, "links start down after a restart");
        assert_eq!(c.state.boot.as_ref().unwrap().model, "TM-1");
        p.kill9().await;
    }
    let mut unique = tx_ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        tx_ids.len(),
        "local transaction ids are never reused across restarts: {tx_ids:?}"
    );
}

/// Issue 3 (c): SIGKILL at random moments of an offline session, 20 times;
/// afterwards the cloud gets every acknowledged message exactly once, in order.
#[tokio::test]
async fn an_offline_session_killed_20_times_reaches_the_cloud_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = free_addr();
    let cfg = write_config(
        dir.path(),
        &config_text(
            &dir.path().join("data"),
            Some(&format!("ws://{cloud}/ocpp")),
            "",
        ),
    );
    let meter = |tx: i64, v: u64| json!({"connectorId": 1, "transactionId": tx, "meterValue": [{"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": v.to_string()}]}]});
    let mut acked = Vec::new();
    let mut value = 0;
    let mut local = None;
    for _ in 0..20 {
        let p = Process::spawn(&cfg).await;
        let mut cp = Charger::connect(&format!("ws://{}/ocpp/CP-KILL", p.ocpp)).await;
        let tx = match local {
            Some(tx) => tx,
            None => {
                let a = cp.call("StartTransaction", json!({"connectorId": 1, "idTag": "K", "meterStart": 0, "timestamp": "2026-01-01T00:00:00Z"})).await;
                *local.insert(a[2]["transactionId"].as_i64().unwrap())
            }
        };
        for _ in 0..fastrand::usize(1..6) {
            value += 1;
            assert_eq!(cp.call("MeterValues", meter(tx, value)).await[2], json!({}));
            acked.push(value);
        }
        // One more, killed while (maybe) in flight: it may or may not be kept.
        value += 1;
        cp.send(&json!([2, format!("x{value}"), "MeterValues", meter(tx, value)]).to_string())
            .await;
        tokio::time::sleep(std::time::Duration::from_micros(fastrand::u64(0..2000))).await;
        p.kill9().await;
    }
    let tx = local.unwrap();
    let p = Process::spawn(&cfg).await;
    let mut cp = Charger::connect(&format!("ws://{}/ocpp/CP-KILL", p.ocpp)).await;
    let a = cp
        .call(
            "StopTransaction",
            json!({"transactionId": tx, "meterStop": 999, "timestamp": "2026-01-01T01:00:00Z"}),
        )
        .await;
    assert_eq!(a[0], 3);

    let mut csms = Csms::start_on(&cloud.to_string(), default_answers()).await;
    let mut got = Vec::new();
    loop {
        let v: serde_json::Value = serde_json::from_str(&csms.next_frame("CP-KILL").await).unwrap();
        if v[0] != 2 {
            continue;
        }
        let action = v[2].as_str().unwrap().to_string();
        if action == "MeterValues" {
            assert_eq!(v[3]["transactionId"], 4242, "mapped to the cloud's id");
        }
        got.push((
            action.clone(),
            v[3]["meterValue"][0]["sampledValue"][0]["value"]
                .as_str()
                .map(|s| s.parse::<u64>().unwrap()),
        ));
        if action == "StopTransaction" {
            break;
        }
    }
    assert_eq!(got.first().map(|g| g.0.as_str()), Some("StartTransaction"));
    assert_eq!(
        got.iter().filter(|g| g.0 == "StartTransaction").count(),
        1,
        "{got:?}"
    );
    let values: Vec<u64> = got.iter().filter_map(|g| g.1).collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {values:?}"
    );
    for v in &acked {
        assert!(
            values.contains(v),
            "acknowledged reading {v} lost: {values:?}"
        );
    }
    p.kill9().await;
}

/// Issue 15: a replay killed again and again sends the cloud at most the
/// one message in flight twice per kill (each answered entry's removal is
/// on disk before the next entry goes), and loses nothing.
#[tokio::test]
async fn a_replay_killed_10_times_repeats_at_most_one_message_per_kill() {
    const QUEUED: u64 = 200;
    const KILLS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let cloud = free_addr();
    let cfg = write_config(
        dir.path(),
        &config_text(
            &dir.path().join("data"),
            Some(&format!("ws://{cloud}/ocpp")),
            "",
        ),
    );
    // The cloud is down: everything is answered by the gateway and queued.
    let p = Process::spawn(&cfg).await;
    let mut cp = Charger::connect(&format!("ws://{}/ocpp/CP-RK", p.ocpp)).await;
    let a = cp.call("StartTransaction", json!({"connectorId": 1, "idTag": "K", "meterStart": 0, "timestamp": "2026-01-01T00:00:00Z"})).await;
    let tx = a[2]["transactionId"].as_i64().unwrap();
    for v in 1..=QUEUED {
        let mv = json!({"connectorId": 1, "transactionId": tx, "meterValue": [{"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": v.to_string()}]}]});
        assert_eq!(cp.call("MeterValues", mv).await[2], json!({}));
    }
    let a = cp
        .call(
            "StopTransaction",
            json!({"transactionId": tx, "meterStop": 999, "timestamp": "2026-01-01T01:00:00Z"}),
        )
        .await;
    assert_eq!(a[0], 3);
    p.kill9().await;

    // The cloud returns; the replay is killed in mid-flight, right after
    // the cloud got a random number of messages.
    let mut csms = Csms::start_on(&cloud.to_string(), default_answers()).await;
    let mut got: Vec<String> = Vec::new();
    let next_call = async |csms: &mut Csms| loop {
        let v: serde_json::Value = serde_json::from_str(&csms.next_frame("CP-RK").await).unwrap();
        if v[0] == 2 {
            return match v[2].as_str().unwrap() {
                "MeterValues" => v[3]["meterValue"][0]["sampledValue"][0]["value"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                other => other.to_string(),
            };
        }
    };
    for _ in 0..KILLS {
        let p = Process::spawn(&cfg).await;
        let _cp = Charger::connect(&format!("ws://{}/ocpp/CP-RK", p.ocpp)).await;
        for _ in 0..fastrand::usize(1..15) {
            got.push(next_call(&mut csms).await);
        }
        p.kill9().await;
    }
    let p = Process::spawn(&cfg).await;
    let _cp = Charger::connect(&format!("ws://{}/ocpp/CP-RK", p.ocpp)).await;
    while got.last().map(String::as_str) != Some("StopTransaction") {
        got.push(next_call(&mut csms).await);
    }
    p.kill9().await;
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len() as u64,
        QUEUED + 2,
        "every queued message reached the cloud"
    );
    let repeated = got.len() - unique.len();
    assert!(
        repeated <= KILLS,
        "{repeated} messages sent twice in {KILLS} kills: {got:?}"
    );
    println!("{KILLS} kills during the replay: {repeated} message(s) sent twice");
}
