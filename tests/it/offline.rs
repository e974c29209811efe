//! Offline resilience: sessions while the cloud is away reach it afterwards,
//! in order, once, with the cloud's own transaction ids.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::harness::*;

fn start(tag: &str, meter: i64) -> Value {
    json!({"connectorId": 1, "idTag": tag, "meterStart": meter, "timestamp": "2026-01-01T10:00:00Z"})
}

fn meter(tx: i64, wh: i64) -> Value {
    json!({"connectorId": 1, "transactionId": tx, "meterValue": [{"timestamp": format!("2026-01-01T10:{:02}:00Z", wh % 60), "sampledValue": [{"value": wh.to_string()}]}]})
}

fn stop(tx: i64, wh: i64) -> Value {
    json!({"transactionId": tx, "meterStop": wh, "timestamp": "2026-01-01T11:00:00Z", "reason": "Local"})
}

/// Frames the CSMS got from `id` until it got `n` of the given actions.
async fn collect(csms: &mut Csms, id: &str, actions: &[&str], n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let v: Value = serde_json::from_str(&csms.next_frame(id).await).unwrap();
        if v[0] == 2 && actions.contains(&v[2].as_str().unwrap()) {
            got.push(v);
        }
    }
    got
}

#[tokio::test]
async fn a_whole_offline_session_reaches_the_cloud_in_order_with_its_ids() {
    let addr = free_addr(); // the cloud is down before the session starts
    let gw = Gateway::start(Some(&format!("ws://{addr}/ocpp")), "").await;
    let mut cp = Charger::connect(&gw.url("CP-OFF")).await;
    for a in [
        cp.call("BootNotification", boot()).await,
        cp.call("Authorize", json!({"idTag": "TAG1"})).await,
    ] {
        assert_eq!(a[0], 3, "{a}");
    }
    let a = cp.call("StartTransaction", start("TAG1", 1000)).await;
    let local = a[2]["transactionId"].as_i64().unwrap();
    assert!(local < 0);
    for k in 1..=15 {
        assert_eq!(
            cp.call("MeterValues", meter(local, 1000 + k * 10)).await[2],
            json!({})
        );
    }
    let a = cp.call("StopTransaction", stop(local, 1200)).await;
    assert_eq!(a[0], 3, "the charger never sees an error: {a}");
    assert_eq!(gw.journal().outbox("CP-OFF").unwrap().len(), 17);
    let stats = gw.journal().outbox_stats("CP-OFF").unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (17, 0));
    assert!(stats.oldest_ms.is_some());

    // The cloud comes back.
    let mut csms = Csms::start_on(&addr.to_string(), default_answers()).await;
    let got = collect(
        &mut csms,
        "CP-OFF",
        &["StartTransaction", "MeterValues", "StopTransaction"],
        17,
    )
    .await;
    assert_eq!(got[0][2], "StartTransaction");
    assert_eq!(
        got[0][3],
        start("TAG1", 1000),
        "original payload, original timestamp"
    );
    for (k, v) in got[1..16].iter().enumerate() {
        assert_eq!(v[2], "MeterValues");
        assert_eq!(
            v[3],
            meter(4242, 1000 + (k as i64 + 1) * 10),
            "in order, with the cloud's id"
        );
    }
    assert_eq!(
        (got[16][2].as_str(), &got[16][3]),
        (Some("StopTransaction"), &stop(4242, 1200))
    );
    let ev = gw
        .wait_event("CP-OFF", "Replayed", |e| e["action"] == "StopTransaction")
        .await;
    assert!(ev["queued_ms"].as_i64().is_some());
    let ev = gw
        .wait_event("CP-OFF", "Replayed", |e| e["action"] == "StartTransaction")
        .await;
    assert_eq!(
        (
            ev["local_transaction_id"].as_i64(),
            ev["cloud_transaction_id"].as_i64()
        ),
        (Some(local), Some(4242))
    );
    assert!(gw.journal().outbox("CP-OFF").unwrap().is_empty());
    assert_eq!(gw.journal().tx_map("CP-OFF").unwrap(), vec![(local, 4242)]);
}

#[tokio::test]
async fn link_lost_between_a_call_and_its_answer() {
    // The cloud takes StartTransaction and dies before answering.
    let mut csms = Csms::start(Arc::new(|action: &str, _: &Value| (action != "StartTransaction").then(|| json!({"status": "Accepted", "currentTime": "2026-01-01T00:00:00Z", "interval": 300})))).await;
    let addr = csms.addr;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = Charger::connect(&gw.url("CP-MID")).await;
    csms.next_connect().await;
    cp.call("BootNotification", boot()).await;
    cp.send(&json!([2, "s1", "StartTransaction", start("TAG2", 0)]).to_string())
        .await;
    collect(&mut csms, "CP-MID", &["StartTransaction"], 1).await;
    csms.kill();
    // The gateway answers the waiting charger itself.
    let a: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!((a[0].as_i64(), a[1].as_str()), (Some(3), Some("s1")));
    let local = a[2]["transactionId"].as_i64().unwrap();
    assert!(local < 0);
    cp.call("MeterValues", meter(local, 50)).await;

    let mut csms = Csms::start_on(&addr.to_string(), default_answers()).await;
    let got = collect(&mut csms, "CP-MID", &["StartTransaction", "MeterValues"], 2).await;
    assert_eq!(
        (got[0][2].as_str(), got[1][2].as_str()),
        (Some("StartTransaction"), Some("MeterValues"))
    );
    assert_eq!(got[1][3]["transactionId"], 4242);
    // Later messages of the transaction, online now, carry the cloud's id too.
    gw.wait_event("CP-MID", "Replayed", |e| e["action"] == "MeterValues")
        .await;
    let a = cp.call("StopTransaction", stop(local, 99)).await;
    assert_eq!(a[0], 3);
    let got = collect(&mut csms, "CP-MID", &["StopTransaction"], 1).await;
    assert_eq!(got[0][3]["transactionId"], 4242);
}

#[tokio::test]
async fn refused_replays_are_retried_then_kept_as_dead_letters() {
    let addr = free_addr();
    let extra = "[offline]\ntransaction_message_attempts = 2\ntransaction_message_retry_interval_secs = 0\n";
    let gw = Gateway::start(Some(&format!("ws://{addr}/ocpp")), extra).await;
    let mut cp = Charger::connect(&gw.url("CP-DL")).await;
    let local = cp.call("StartTransaction", start("TAG3", 0)).await[2]["transactionId"]
        .as_i64()
        .unwrap();
    cp.call("StopTransaction", stop(local, 10)).await;

    let refuse: Answerer = Arc::new(|action: &str, _: &Value| match action {
        "StartTransaction" => Some(json!({"__callerror": "InternalError"})),
        _ => Some(json!({})),
    });
    let mut csms = Csms::start_on(&addr.to_string(), refuse).await;
    let got = collect(&mut csms, "CP-DL", &["StartTransaction"], 2).await;
    assert_eq!(got.len(), 2, "tried TransactionMessageAttempts times");
    gw.wait_event("CP-DL", "ReplayRetry", |e| e["attempt"] == 1)
        .await;
    gw.wait_event("CP-DL", "DeadLetter", |e| e["action"] == "StartTransaction")
        .await;
    // Its StopTransaction has no cloud transaction to go to: a dead letter too.
    gw.wait_event("CP-DL", "DeadLetter", |e| e["action"] == "StopTransaction")
        .await;
    assert!(gw.journal().outbox("CP-DL").unwrap().is_empty());

    // Visible in the API, never silently dropped.
    let api = chargegate::client::ApiClient {
        addr: gw.running.as_ref().unwrap().api_addr,
        token: None,
    };
    let dead: Vec<Value> = api
        .get("/api/v1/chargers/CP-DL/dead-letters")
        .await
        .unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(
        (dead[0]["action"].as_str(), dead[0]["attempts"].as_u64()),
        (Some("StartTransaction"), Some(2))
    );
    assert!(dead[0]["error"].as_str().unwrap().contains("InternalError"));
    let status: chargegate::api::Status = api.get("/api/v1/status").await.unwrap();
    let c = status
        .chargers
        .iter()
        .find(|c| c.state.id == "CP-DL")
        .unwrap();
    assert_eq!((c.outbox.depth, c.outbox.dead_letters), (0, 2));

    // And in the CLI.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &format!("[api]\nlisten = \"{}\"\n", api.addr));
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(&["--config", cfg.to_str().unwrap(), "dead-letters", "CP-DL"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("StartTransaction after 2 attempt(s): InternalError")
            && out.contains("StopTransaction after 0 attempt(s)"),
        "{out}"
    );
}

#[tokio::test]
async fn the_clouds_remote_stop_reaches_the_charger_with_the_local_id() {
    let addr = free_addr();
    let gw = Gateway::start(Some(&format!("ws://{addr}/ocpp")), "").await;
    let mut cp = Charger::connect(&gw.url("CP-RS")).await;
    let local = cp.call("StartTransaction", start("TAG4", 0)).await[2]["transactionId"]
        .as_i64()
        .unwrap();
    let mut csms = Csms::start_on(&addr.to_string(), default_answers()).await;
    collect(&mut csms, "CP-RS", &["StartTransaction"], 1).await;
    gw.wait_event("CP-RS", "Replayed", |e| e["action"] == "StartTransaction")
        .await;

    csms.send(
        "CP-RS",
        r#"[2,"rs1","RemoteStopTransaction",{"transactionId":4242}]"#,
    );
    let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(
        (v[2].as_str(), v[3]["transactionId"].as_i64()),
        (Some("RemoteStopTransaction"), Some(local))
    );
    cp.send(r#"[3,"rs1",{"status":"Accepted"}]"#).await;
    loop {
        let v: Value = serde_json::from_str(&csms.next_frame("CP-RS").await).unwrap();
        if v[0] == 3 {
            assert_eq!(
                (v[1].as_str(), v[2]["status"].as_str()),
                (Some("rs1"), Some("Accepted"))
            );
            break;
        }
    }
    // Other ids pass untouched.
    csms.send(
        "CP-RS",
        r#"[2,"rs2","RemoteStopTransaction",{"transactionId":999}]"#,
    );
    assert_eq!(
        cp.recv().await,
        r#"[2,"rs2","RemoteStopTransaction",{"transactionId":999}]"#
    );
}

#[tokio::test]
async fn offline_mode_disconnect_closes_16_chargers_while_the_cloud_is_away() {
    let csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "[offline]\nmode = \"disconnect\"\n").await;
    let mut cp = Charger::connect(&gw.url("CP-DISC")).await;
    assert_eq!(
        cp.call("Heartbeat", json!({})).await[2]["currentTime"],
        "2026-01-01T00:00:00Z"
    );
    csms.kill();
    assert_eq!(
        cp.closed().await,
        Some(1013),
        "Try Again Later: the charger queues by itself"
    );
    // While the cloud stays away, a reconnecting charger is closed again,
    // and the outage is journaled once, not at every attempt.
    gw.wait_count("CP-DISC", "Disconnect", 2).await;
    let before = gw.events("CP-DISC").len();
    for _ in 0..3 {
        let mut cp = Charger::connect(&gw.url("CP-DISC")).await;
        assert_eq!(cp.closed().await, Some(1013));
    }
    let refused = gw
        .wait_event("CP-DISC", "Refused", |e| {
            e["reason"]
                .as_str()
                .unwrap()
                .starts_with("cloud unreachable")
        })
        .await;
    assert!(refused["reason"]
        .as_str()
        .unwrap()
        .contains("not journaled"));
    assert_eq!(
        gw.events("CP-DISC").len(),
        before + 1,
        "{:?}",
        gw.events("CP-DISC")
    );
}

#[tokio::test]
async fn the_clouds_tag_answers_and_local_list_are_used_offline() {
    let answers: Answerer = Arc::new(|action: &str, req: &Value| match action {
        "Authorize" if req["idTag"] == "CACHEDBLOCK" => {
            Some(json!({"idTagInfo": {"status": "Blocked"}}))
        }
        _ => default_answers()(action, req),
    });
    let mut csms = Csms::start(answers).await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = Charger::connect(&gw.url("CP-AUTH")).await;
    csms.next_connect().await;
    assert_eq!(
        cp.call("Authorize", json!({"idTag": "CACHEDBLOCK"})).await[2]["idTagInfo"]["status"],
        "Blocked"
    );
    assert_eq!(
        cp.call("Authorize", json!({"idTag": "BOTH"})).await[2]["idTagInfo"]["status"],
        "Accepted"
    );

    // The cloud sends the charger a local list; the charger takes it.
    let list = r#"[2,"sl1","SendLocalList",{"listVersion":5,"updateType":"Full","localAuthorizationList":[{"idTag":"LISTBLOCK","idTagInfo":{"status":"Blocked"}},{"idTag":"BOTH","idTagInfo":{"status":"Invalid"}}]}]"#;
    csms.send("CP-AUTH", list);
    assert_eq!(cp.recv().await, list);
    cp.send(r#"[3,"sl1",{"status":"Accepted"}]"#).await;
    gw.wait_event("CP-AUTH", "RemoteAction", |e| {
        e["action"] == "SendLocalList"
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.journal().local_list_version("CP-AUTH") != Some(5) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "local list version not stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    csms.kill();
    gw.wait_event("CP-AUTH", "Disconnect", |e| e["link"] == "cloud")
        .await;
    let st = |v: Value| v[2]["idTagInfo"]["status"].as_str().unwrap().to_string();
    assert_eq!(
        st(cp.call("Authorize", json!({"idTag": "CACHEDBLOCK"})).await),
        "Blocked",
        "from the cache"
    );
    assert_eq!(
        st(cp.call("Authorize", json!({"idTag": "LISTBLOCK"})).await),
        "Blocked",
        "from the local list"
    );
    assert_eq!(
        st(cp.call("Authorize", json!({"idTag": "BOTH"})).await),
        "Invalid",
        "the local list wins over the cache"
    );
    assert_eq!(
        st(cp.call("Authorize", json!({"idTag": "NEWTAG"})).await),
        "Accepted",
        "unknown: the local_list policy"
    );
    let a = cp.call("StartTransaction", start("CACHEDBLOCK", 0)).await;
    assert_eq!(a[2]["idTagInfo"]["status"], "Blocked");
}

#[tokio::test]
async fn the_cloud_gets_the_missed_boot_first_and_the_latest_statuses_last() {
    let addr = free_addr();
    let gw = Gateway::start(Some(&format!("ws://{addr}/ocpp")), "").await;
    let mut cp = Charger::connect(&gw.url("CP-SYNC")).await;
    cp.call("BootNotification", boot()).await;
    let status = |c: u32, s: &str| json!({"connectorId": c, "errorCode": "NoError", "status": s});
    for (c, s) in [(1, "Preparing"), (2, "Available"), (1, "Charging")] {
        cp.call("StatusNotification", status(c, s)).await;
    }
    let local = cp.call("StartTransaction", start("T", 0)).await[2]["transactionId"]
        .as_i64()
        .unwrap();
    assert!(local < 0);

    let mut csms = Csms::start_on(&addr.to_string(), default_answers()).await;
    let got = collect(
        &mut csms,
        "CP-SYNC",
        &["BootNotification", "StatusNotification", "StartTransaction"],
        4,
    )
    .await;
    let actions: Vec<&str> = got.iter().map(|v| v[2].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "BootNotification",
            "StartTransaction",
            "StatusNotification",
            "StatusNotification"
        ]
    );
    assert_eq!(got[0][3], boot(), "the charger's own boot payload");
    assert_eq!(
        got[2][3],
        status(1, "Charging"),
        "only the latest status of connector 1"
    );
    assert_eq!(got[3][3], status(2, "Available"));
    assert!(
        got.iter()
            .all(|v| v[1].as_str().unwrap().starts_with("cg-")),
        "the gateway's own message ids"
    );
    gw.wait_event("CP-SYNC", "Replayed", |e| {
        e["action"] == "StatusNotification"
    })
    .await;
}

#[tokio::test]
async fn an_offline_transaction_the_cloud_refuses_is_stopped_as_deauthorized() {
    let addr = free_addr();
    let gw = Gateway::start(Some(&format!("ws://{addr}/ocpp")), "").await;
    let mut cp = Charger::connect(&gw.url("CP-DEAUTH")).await;
    let a = cp.call("StartTransaction", start("STOLEN", 0)).await;
    assert_eq!(
        a[2]["idTagInfo"]["status"], "Accepted",
        "offline, the policy let it start"
    );
    let local = a[2]["transactionId"].as_i64().unwrap();

    let answers: Answerer = Arc::new(|action: &str, req: &Value| match action {
        "StartTransaction" => {
            Some(json!({"transactionId": 5150, "idTagInfo": {"status": "Invalid"}}))
        }
        _ => default_answers()(action, req),
    });
    let mut csms = Csms::start_on(&addr.to_string(), answers).await;
    // The gateway stops the running transaction on the charger …
    let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(
        (v[2].as_str(), v[3]["transactionId"].as_i64()),
        (Some("RemoteStopTransaction"), Some(local))
    );
    assert!(
        v[1].as_str().unwrap().starts_with("cg-"),
        "the gateway's own call"
    );
    cp.send(&json!([3, v[1], {"status": "Accepted"}]).to_string())
        .await;
    cp.call("StopTransaction", json!({"transactionId": local, "meterStop": 5, "timestamp": "2026-01-01T10:30:00Z", "reason": "Remote"})).await;
    // … and the cloud gets its StopTransaction as DeAuthorized, with its own id.
    let got = collect(
        &mut csms,
        "CP-DEAUTH",
        &["StartTransaction", "StopTransaction"],
        2,
    )
    .await;
    assert_eq!(got[1][3]["transactionId"], 5150);
    assert_eq!(got[1][3]["reason"], "DeAuthorized");
    // The RemoteStop's answer was consumed by the gateway, never forwarded.
    gw.wait_event("CP-DEAUTH", "RemoteAction", |e| {
        e["action"] == "RemoteStopTransaction" && e["source"] == "gateway"
    })
    .await;
}
