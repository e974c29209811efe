//! Remote actions from the API and the CLI, through the gateway to a
//! charger, one CALL at a time even when the cloud talks too.

use serde_json::{json, Value};

use chargegate::api::ActionResult;
use chargegate::client::ApiClient;

use crate::harness::*;

fn api(gw: &Gateway) -> ApiClient {
    ApiClient {
        addr: gw.running.as_ref().unwrap().api_addr,
        token: None,
    }
}

/// Answer the next CALL the charger gets with `result`; returns that CALL.
async fn answer_next(cp: &mut Charger, result: Value) -> Value {
    let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(v[0], 2, "a CALL: {v}");
    cp.send(&json!([3, v[1], result]).to_string()).await;
    v
}

#[tokio::test]
async fn actions_reach_the_charger_and_their_results_come_back() {
    let gw = Gateway::start(None, "").await;
    let mut cp = Charger::connect(&gw.url("CP-ACT")).await;
    cp.call("BootNotification", boot()).await;
    let api = api(&gw);

    let call = tokio::spawn({
        let api = api.clone();
        async move {
            api.post::<ActionResult>(
                "/api/v1/chargers/CP-ACT/actions/reboot",
                &json!({"hard": true}),
            )
            .await
            .unwrap()
        }
    });
    let v = answer_next(&mut cp, json!({"status": "Accepted"})).await;
    assert_eq!(
        (v[2].as_str(), v[3]["type"].as_str()),
        (Some("Reset"), Some("Hard"))
    );
    assert!(
        v[1].as_str().unwrap().starts_with("cg-"),
        "the gateway's own message id"
    );
    let r = call.await.unwrap();
    assert_eq!(
        (
            r.outcome.as_str(),
            r.result.as_ref().unwrap()["status"].as_str()
        ),
        ("result", Some("Accepted"))
    );
    gw.wait_event("CP-ACT", "RemoteAction", |e| {
        e["action"] == "Reset" && e["source"] == "cli" && e["result"]["status"] == "Accepted"
    })
    .await;

    // Stop knows the running transaction.
    let tx = cp.call("StartTransaction", json!({"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2026-01-01T00:00:00Z"})).await[2]["transactionId"].as_i64().unwrap();
    gw.wait_event("CP-ACT", "StartTransaction", |_| true).await;
    let call = tokio::spawn({
        let api = api.clone();
        async move {
            api.post::<ActionResult>("/api/v1/chargers/CP-ACT/actions/stop", &json!({}))
                .await
                .unwrap()
        }
    });
    let v = answer_next(&mut cp, json!({"status": "Accepted"})).await;
    assert_eq!(
        (v[2].as_str(), v[3]["transactionId"].as_i64()),
        (Some("RemoteStopTransaction"), Some(tx))
    );
    assert_eq!(call.await.unwrap().outcome, "result");

    // A charger that answers with a CALLERROR: the error comes back.
    let call = tokio::spawn({
        let api = api.clone();
        async move {
            api.post::<ActionResult>(
                "/api/v1/chargers/CP-ACT/actions/unlock",
                &json!({"connector": 2}),
            )
            .await
            .unwrap()
        }
    });
    let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(v[3]["connectorId"], 2);
    cp.send(&json!([4, v[1], "NotSupported", "no lock", {}]).to_string())
        .await;
    let r = call.await.unwrap();
    assert_eq!(
        (r.outcome.as_str(), r.error.as_deref()),
        ("error", Some("NotSupported: no lock"))
    );
}

#[tokio::test]
async fn refusals_are_clear() {
    let gw = Gateway::start(None, "[[charger]]\nid = \"CP-AWAY\"\n").await;
    let api = api(&gw);
    let err = |r: anyhow::Result<ActionResult>| r.unwrap_err().to_string();
    let e = err(api
        .post("/api/v1/chargers/NOPE/actions/reboot", &json!({}))
        .await);
    assert!(e.contains("404") && e.contains("unknown charger"), "{e}");
    let e = err(api
        .post("/api/v1/chargers/CP-AWAY/actions/reboot", &json!({}))
        .await);
    assert!(e.contains("409") && e.contains("offline"), "{e}");
    let _cp = Charger::connect(&gw.url("CP-HERE")).await;
    gw.wait_event("CP-HERE", "Connect", |_| true).await;
    let e = err(api
        .post("/api/v1/chargers/CP-HERE/actions/stop", &json!({}))
        .await);
    assert!(
        e.contains("400") && e.contains("no running transaction on connector 1"),
        "{e}"
    );
    let e = err(api
        .post("/api/v1/chargers/CP-HERE/actions/dance", &json!({}))
        .await);
    assert!(e.contains("unknown action"), "{e}");
}

#[tokio::test]
async fn gateway_and_cloud_calls_take_turns_on_one_charger() {
    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = Charger::connect(&gw.url("CP-TURN")).await;
    csms.next_connect().await;
    let api = api(&gw);

    // The cloud's call is out; the gateway's waits for it.
    csms.send("CP-TURN", r#"[2,"cloud-1","GetConfiguration",{}]"#);
    let cloud_call: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(cloud_call[1], "cloud-1");
    let local = tokio::spawn({
        let api = api.clone();
        async move {
            api.post::<ActionResult>(
                "/api/v1/chargers/CP-TURN/actions/trigger",
                &json!({"message": "Heartbeat"}),
            )
            .await
            .unwrap()
        }
    });
    // Nothing else reaches the charger while the cloud's call is unanswered.
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), cp.recv()).await;
    assert!(early.is_err(), "the gateway sent a second CALL: {early:?}");
    cp.send(r#"[3,"cloud-1",{"configurationKey":[]}]"#).await;
    let v = answer_next(&mut cp, json!({"status": "Accepted"})).await;
    assert_eq!(v[2], "TriggerMessage");
    // While the gateway's call is out, a new cloud call waits in turn.
    csms.send("CP-TURN", r#"[2,"cloud-2","Reset",{"type":"Soft"}]"#);
    assert_eq!(local.await.unwrap().outcome, "result");
    let v = answer_next(&mut cp, json!({"status": "Accepted"})).await;
    assert_eq!(v[1], "cloud-2");

    // The cloud got its two answers and never the gateway's.
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let v: Value = serde_json::from_str(&csms.next_frame("CP-TURN").await).unwrap();
        if v[0] == 3 {
            answers.push(v[1].as_str().unwrap().to_string());
        }
    }
    assert_eq!(answers, ["cloud-1", "cloud-2"]);
}

#[test]
fn the_cli_runs_an_action() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut cp, p, cfg) = rt.block_on(async {
        let cfg = write_config(dir.path(), &config_text(&dir.path().join("data"), None, ""));
        let p = Process::spawn(&cfg).await;
        let cp = Charger::connect(&format!("ws://{}/ocpp/CP-CLI-ACT", p.ocpp)).await;
        // The CLI finds the API through a config naming the bound port.
        let text = config_text(&dir.path().join("data"), None, "").replace(
            "[api]\nlisten = \"127.0.0.1:0\"",
            &format!("[api]\nlisten = \"{}\"", p.api),
        );
        let cli_dir = dir.path().join("cli");
        std::fs::create_dir_all(&cli_dir).unwrap();
        (cp, p, write_config(&cli_dir, &text))
    });
    let c = cfg.to_str().unwrap().to_string();
    let out = std::thread::spawn(move || cli(&["--config", &c, "action", "reboot", "CP-CLI-ACT"]));
    rt.block_on(async {
        let v = answer_next(&mut cp, json!({"status": "Rejected"})).await;
        assert_eq!(v[2], "Reset");
    });
    let (code, out, err) = out.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        r#"reboot CP-CLI-ACT: Reset {"type":"Soft"} → Rejected"#
    );
    rt.block_on(p.kill9());
}

#[tokio::test]
async fn force_stop_escalates_and_closes_the_transaction_when_the_charger_ignores_it() {
    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "[api]\nforce_stop_wait_secs = 1\n").await;
    let mut cp = Charger::connect(&gw.url("CP-STUCK")).await;
    csms.next_connect().await;
    let tx = cp.call("StartTransaction", json!({"connectorId": 1, "idTag": "T", "meterStart": 100, "timestamp": "2026-01-01T00:00:00Z"})).await[2]["transactionId"].as_i64().unwrap();
    assert_eq!(tx, 4242);
    let mv = json!({"connectorId": 1, "transactionId": tx, "meterValue": [{"timestamp": "2026-01-01T00:10:00Z", "sampledValue": [{"value": "1234"}]}]});
    cp.call("MeterValues", mv).await;
    gw.wait_event("CP-STUCK", "MeterValues", |_| true).await;

    let api = api(&gw);
    let call = tokio::spawn(async move {
        api.post::<ActionResult>("/api/v1/chargers/CP-STUCK/actions/force-stop", &json!({}))
            .await
            .unwrap()
    });
    // A charger that says no to everything.
    let mut calls = Vec::new();
    for answer in [
        json!({"status": "Rejected"}),
        json!({"status": "Rejected"}),
        json!({"status": "UnlockFailed"}),
        json!({"status": "Rejected"}),
    ] {
        calls.push(
            answer_next(&mut cp, answer).await[2]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        calls,
        [
            "RemoteStopTransaction",
            "ChangeAvailability",
            "UnlockConnector",
            "Reset"
        ]
    );
    let r = call.await.unwrap();
    let report = r.result.unwrap();
    assert_eq!(
        (
            report["stopped_by_charger"].as_bool(),
            report["closed_by_gateway"].as_bool()
        ),
        (Some(false), Some(true))
    );
    assert_eq!(report["steps"][3]["request"]["type"], "Hard");

    // Closed in the journal as force-stopped, at the last known reading …
    let ev = gw
        .wait_event("CP-STUCK", "StopTransaction", |e| e["forced"] == true)
        .await;
    assert_eq!(
        (
            ev["meter_stop"].as_i64(),
            ev["reason"].as_str(),
            ev["answered_by"].as_str()
        ),
        (Some(1234), Some("Other"), Some("gateway"))
    );
    assert!(gw.journal().state().chargers["CP-STUCK"]
        .transactions
        .is_empty());
    // The force stop is one journal record with its source, its steps and
    // the charger's answer to each, and the outcome; each step's own
    // record says it was part of it.
    let fs = gw
        .wait_event("CP-STUCK", "RemoteAction", |e| e["action"] == "ForceStop")
        .await;
    assert_eq!(fs["source"], "cli");
    assert_eq!(fs["request"]["transaction"], 4242);
    let steps: Vec<(String, String)> = fs["result"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["call"].as_str().unwrap().to_string(),
                s["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("RemoteStopTransaction".into(), "Rejected".into()),
            ("ChangeAvailability".into(), "Rejected".into()),
            ("UnlockConnector".into(), "UnlockFailed".into()),
            ("Reset".into(), "Rejected".into()),
        ]
    );
    assert!(fs["result"]["status"]
        .as_str()
        .unwrap()
        .starts_with("closed by the gateway"));
    let step_records: Vec<Value> = gw
        .events("CP-STUCK")
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .filter(|v| v["kind"] == "RemoteAction" && v["action"] != "ForceStop")
        .collect();
    assert_eq!(step_records.len(), 4);
    assert!(
        step_records.iter().all(|v| v["part_of"] == "ForceStop"),
        "{step_records:?}"
    );
    let summary = gw
        .events("CP-STUCK")
        .iter()
        .rev()
        .find(|r| matches!(&r.event, chargegate::event::Event::RemoteAction { action, .. } if action == "ForceStop"))
        .unwrap()
        .event
        .summary();
    assert!(
        summary.starts_with("ForceStop from cli: closed by the gateway"),
        "{summary}"
    );
    assert!(
        summary.contains("UnlockConnector UnlockFailed"),
        "{summary}"
    );
    // … and toward the cloud.
    loop {
        let v: Value = serde_json::from_str(&csms.next_frame("CP-STUCK").await).unwrap();
        if v[0] == 2 && v[2] == "StopTransaction" {
            assert_eq!(
                (
                    v[3]["transactionId"].as_i64(),
                    v[3]["meterStop"].as_i64(),
                    v[3]["reason"].as_str()
                ),
                (Some(4242), Some(1234), Some("Other"))
            );
            break;
        }
    }
}

#[tokio::test]
async fn force_stop_ends_at_the_first_step_a_charger_follows() {
    let gw = Gateway::start(None, "[api]\nforce_stop_wait_secs = 5\n").await;
    let mut cp = Charger::connect(&gw.url("CP-NICE")).await;
    let tx = cp.call("StartTransaction", json!({"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2026-01-01T00:00:00Z"})).await[2]["transactionId"].as_i64().unwrap();
    gw.wait_event("CP-NICE", "StartTransaction", |_| true).await;
    let api = api(&gw);
    let call = tokio::spawn(async move {
        api.post::<ActionResult>(
            "/api/v1/chargers/CP-NICE/actions/force-stop",
            &json!({"connector": 1}),
        )
        .await
        .unwrap()
    });
    let v = answer_next(&mut cp, json!({"status": "Accepted"})).await;
    assert_eq!(v[2], "RemoteStopTransaction");
    cp.call("StopTransaction", json!({"transactionId": tx, "meterStop": 10, "timestamp": "2026-01-01T01:00:00Z", "reason": "Remote"})).await;
    let report = call.await.unwrap().result.unwrap();
    assert_eq!(
        (
            report["stopped_by_charger"].as_bool(),
            report["steps"].as_array().unwrap().len()
        ),
        (Some(true), 1)
    );
}

#[tokio::test]
async fn run_a_check_combines_the_chargers_answers_with_the_gateways_view() {
    let gw = Gateway::start(None, "").await;
    let mut cp = Charger::connect(&gw.url("CP-CHECK")).await;
    cp.call("BootNotification", boot()).await;
    let api = api(&gw);
    let call = tokio::spawn(async move {
        api.post::<ActionResult>("/api/v1/chargers/CP-CHECK/actions/check", &json!({}))
            .await
            .unwrap()
    });
    let mut asked = Vec::new();
    for answer in ["Accepted", "Accepted", "Rejected"] {
        let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
        asked.push(v[3]["requestedMessage"].as_str().unwrap().to_string());
        if asked.len() == 1 {
            // The triggered status: a fault.
            cp.call(
                "StatusNotification",
                json!({"connectorId": 1, "errorCode": "GroundFailure", "status": "Faulted"}),
            )
            .await;
        }
        cp.send(&json!([3, v[1], { "status": answer }]).to_string())
            .await;
    }
    assert_eq!(asked, ["StatusNotification", "Heartbeat", "MeterValues"]);
    let report = call.await.unwrap().result.unwrap();
    assert_eq!(report["state"]["boot"]["firmware"], "1.2.3");
    let findings: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        findings.contains(&"connector 1 is Faulted with error GroundFailure"),
        "{findings:?}"
    );
    assert!(
        findings.contains(&"TriggerMessage MeterValues: Rejected"),
        "{findings:?}"
    );
    let text = chargegate::client::format_check("CP-CHECK", &report);
    assert!(
        text.contains("what looks wrong:") && text.contains("TestVendor TM-1 firmware 1.2.3"),
        "{text}"
    );
}

/// One raw HTTP/1.1 request; returns the status line and the body.
async fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&out[..split])
        .lines()
        .next()
        .unwrap()
        .to_string();
    (status, out[split + 4..].to_vec())
}

#[tokio::test]
async fn diagnostics_are_uploaded_to_the_gateway_listed_and_served() {
    let gw = Gateway::start(None, "").await;
    let mut cp = Charger::connect(&gw.url("CP-DIAG")).await;
    let api = api(&gw);
    let call = tokio::spawn({
        let api = api.clone();
        async move {
            api.post::<ActionResult>("/api/v1/chargers/CP-DIAG/actions/diagnostics", &json!({}))
                .await
                .unwrap()
        }
    });
    let v = answer_next(&mut cp, json!({"fileName": "diag.log"})).await;
    assert_eq!(v[2], "GetDiagnostics");
    let location = v[3]["location"].as_str().unwrap().to_string();
    assert_eq!(call.await.unwrap().result.unwrap()["fileName"], "diag.log");

    // The charger uploads to the location it was given.
    let rest = location.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let content = b"2026-01-01 fault log\x00\x01\x02".to_vec();
    let (status, _) = http(addr, "PUT", &format!("{path}diag.log"), &content).await;
    assert!(status.contains("200"), "{status}");
    let (status, _) = http(addr, "PUT", &format!("{path}diag.log"), &content).await;
    assert!(
        status.contains("403"),
        "the upload URL works once: {status}"
    );

    let files: Vec<Value> = api
        .get("/api/v1/chargers/CP-DIAG/diagnostics")
        .await
        .unwrap();
    assert_eq!(files.len(), 1);
    let name = files[0]["file"].as_str().unwrap().to_string();
    assert!(
        name.ends_with("-diag.log") && files[0]["bytes"] == content.len(),
        "{files:?}"
    );
    let (status, body) = http(
        &api.addr.to_string(),
        "GET",
        &format!("/api/v1/chargers/CP-DIAG/diagnostics/{name}"),
        b"",
    )
    .await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, content);
    gw.wait_event("CP-DIAG", "DiagnosticsUploaded", |e| {
        e["bytes"] == content.len()
    })
    .await;
}

#[tokio::test]
async fn the_installers_daily_tools_map_to_their_ocpp_calls() {
    let gw = Gateway::start(None, "[api]\ndefault_id_tag = \"SITE-TAG\"\n").await;
    let mut cp = Charger::connect(&gw.url("CP-TOOLS")).await;
    gw.wait_event("CP-TOOLS", "Connect", |_| true).await;
    let api = api(&gw);
    let cases = [
        (
            "start",
            json!({}),
            "RemoteStartTransaction",
            json!({"connectorId": 1, "idTag": "SITE-TAG"}),
        ),
        (
            "start",
            json!({"connector": 2, "id_tag": "TAG9"}),
            "RemoteStartTransaction",
            json!({"connectorId": 2, "idTag": "TAG9"}),
        ),
        (
            "disable",
            json!({"connector": 1}),
            "ChangeAvailability",
            json!({"connectorId": 1, "type": "Inoperative"}),
        ),
        (
            "enable",
            json!({}),
            "ChangeAvailability",
            json!({"connectorId": 0, "type": "Operative"}),
        ),
        (
            "get-config",
            json!({"key": "HeartbeatInterval"}),
            "GetConfiguration",
            json!({"key": ["HeartbeatInterval"]}),
        ),
        (
            "change-config",
            json!({"key": "HeartbeatInterval", "value": "60"}),
            "ChangeConfiguration",
            json!({"key": "HeartbeatInterval", "value": "60"}),
        ),
        (
            "trigger",
            json!({"message": "MeterValues", "connector": 1}),
            "TriggerMessage",
            json!({"requestedMessage": "MeterValues", "connectorId": 1}),
        ),
    ];
    for (name, body, call, payload) in cases {
        let req = tokio::spawn({
            let api = api.clone();
            async move {
                api.post::<ActionResult>(
                    &format!("/api/v1/chargers/CP-TOOLS/actions/{name}"),
                    &body,
                )
                .await
                .unwrap()
            }
        });
        let v = answer_next(&mut cp, json!({"status": "Accepted"})).await;
        assert_eq!((v[2].as_str(), &v[3]), (Some(call), &payload), "{name}");
        let r = req.await.unwrap();
        assert_eq!((r.call.as_str(), r.outcome.as_str()), (call, "result"));
    }
    assert_eq!(
        gw.wait_count("CP-TOOLS", "RemoteAction", 7).await,
        7,
        "each action journaled"
    );

    // A secret goes to the charger as it is, and nowhere else.
    let body =
        json!({"key": "AuthorizationKey", "value": "0011223344556677889900aabbccddeeff001122"});
    let req = tokio::spawn({
        let api = api.clone();
        async move {
            api.post::<ActionResult>("/api/v1/chargers/CP-TOOLS/actions/change-config", &body)
                .await
                .unwrap()
        }
    });
    let v = answer_next(&mut cp, json!({"status": "Accepted"})).await;
    assert_eq!(v[3]["value"], "0011223344556677889900aabbccddeeff001122");
    let r = req.await.unwrap();
    assert_eq!(r.request["value"], "(redacted)", "the API does not echo it");
    let ev = gw
        .wait_event("CP-TOOLS", "RemoteAction", |e| {
            e["request"]["key"] == "AuthorizationKey"
        })
        .await;
    assert_eq!(ev["request"]["value"], "(redacted)", "nor does the journal");
}

/// A charger that never answers: the session times the call out itself
/// after `call_timeout` (3 s here), well before the API's backstop, and the
/// charger's connection stays up.
#[tokio::test]
async fn an_action_the_charger_never_answers_times_out() {
    let gw = Gateway::start(None, "").await;
    let mut cp = Charger::connect(&gw.url("CP-DEAF")).await;
    cp.call("BootNotification", boot()).await;
    let reboot = || {
        let api = api(&gw);
        tokio::spawn(async move {
            api.post::<ActionResult>("/api/v1/chargers/CP-DEAF/actions/reboot", &json!({}))
                .await
                .unwrap()
        })
    };
    let call = reboot();
    let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(v[2], "Reset", "{v}");
    let r = call.await.unwrap();
    assert_eq!(r.outcome, "timeout", "{r:?}");
    // Timed out and journaled by the session, not by the API's backstop
    // (which would have left the call pending in a sleeping session).
    gw.wait_event("CP-DEAF", "RemoteAction", |e| {
        e["action"] == "Reset"
            && e["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("timeout"))
    })
    .await;
    // The session is free again: the next call goes out.
    let call = reboot();
    answer_next(&mut cp, json!({"status": "Accepted"})).await;
    assert_eq!(call.await.unwrap().outcome, "result");
}
