//! OCPP 2.0.1 through the gateway with peers we did not write (the Python
//! `ocpp` package's `v201` classes, which check every message against the
//! official 2.0.1 schemas): subprotocol negotiation with the cloud.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::harness::*;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/ocpp_peer.py");

/// The Python 2.0.1 CSMS, accepting `protos` (its order of preference).
struct PyCsms {
    port: u16,
    out: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl PyCsms {
    async fn start(protos: &str, port: u16) -> PyCsms {
        let mut child = tokio::process::Command::new("python3")
            .args([PEER, "csms201", protos, &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (scripts/test installs it)");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, out.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the Python CSMS started; is the `ocpp` package installed?");
        let port = first
            .strip_prefix("PORT ")
            .expect("PORT line")
            .parse()
            .unwrap();
        PyCsms {
            port,
            out,
            _child: child,
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ocpp", self.port)
    }

    /// The next event line with `key` = `value`.
    async fn expect(&mut self, key: &str, value: &str) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let line = self.out.next_line().await.unwrap().expect("CSMS running");
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if v[key] == value {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {key}={value} from the CSMS"))
    }
}

/// Run the Python 2.0.1 charger offering `offer`; its output lines.
async fn py_charger(gw: &Gateway, id: &str, offer: &str) -> Vec<Value> {
    let run = tokio::process::Command::new("python3")
        .args([
            PEER,
            "charger201",
            &format!("ws://{}/ocpp", gw.ocpp),
            id,
            offer,
        ])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the charger finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python charger failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn a_charger_offering_both_versions_gets_what_the_cloud_chooses() {
    // A cloud that speaks 2.0.1 only: the charger's first choice reaches it.
    let mut cloud = PyCsms::start("ocpp2.0.1", 0).await;
    let gw = Gateway::start(Some(&cloud.url()), "").await;
    let got = py_charger(&gw, "PY-201", "ocpp2.0.1,ocpp1.6").await;
    assert_eq!(got[0]["subprotocol"], "ocpp2.0.1", "{got:?}");
    assert!(
        got.iter().any(|l| l["done"] == true),
        "a whole session: {got:?}"
    );
    let c = cloud.expect("csms_connected", "PY-201").await;
    assert_eq!(c["subprotocol"], "ocpp2.0.1");
    cloud.expect("csms_got", "BootNotification").await;
    for kind in ["Started", "Updated", "Ended"] {
        let ev = cloud.expect("csms_got", "TransactionEvent").await;
        assert_eq!(ev["event_type"], kind);
    }
    // The journal reads as it does for a 1.6 charger.
    assert_eq!(gw.wait_count("PY-201", "StopTransaction", 1).await, 1);
    let mut evs = gw.events("PY-201");
    evs.sort_by_key(|r| r.seq);
    let log: Vec<String> = evs
        .iter()
        .filter(|r| !matches!(r.event.kind(), "Connect" | "Disconnect"))
        .map(|r| format!("{} {}", r.event.kind(), r.event.summary()))
        .collect();
    let want = [
        "BootNotification PyVendor PyModel201 firmware - → Accepted by cloud",
        "StatusNotification connector 1 Occupied",
        "Authorize PYTAG → Accepted by cloud",
        "StartTransaction connector 1 tag PYTAG meter 100 Wh → transaction py-tx-1 Accepted",
        "StatusNotification connector 1 Charging (Authorized)",
        "StatusNotification connector 1 SuspendedEVSE (ChargingStateChanged)",
        "MeterValues connector 1 transaction py-tx-1 150 Wh",
        "StatusNotification connector 1 EVConnected (StopAuthorized)",
        "StopTransaction transaction py-tx-1 meter 200 Wh reason Local",
    ];
    assert_eq!(log, want);
    let state = gw.journal().state();
    let c = &state.chargers["PY-201"];
    assert!(c.transactions.is_empty(), "ended: {:?}", c.transactions);
    assert_eq!(c.connectors[&1].status, "EVConnected");

    // A cloud that takes both: it is offered the charger's list in the
    // charger's order, and the charger is given what it chose.
    let mut both = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&both.url()), "").await;
    let cp = connect_status(&gw.url("CP-21"), Some("ocpp2.0.1, ocpp1.6"), None)
        .await
        .unwrap();
    let (_, offered_first, _) = both.next_connect().await;
    assert_eq!(offered_first.as_deref(), Some("ocpp2.0.1"));
    assert_eq!(cp.protocol.as_deref(), Some("ocpp2.0.1"));
    let cp = connect_status(&gw.url("CP-16"), Some("ocpp1.6, ocpp2.0.1"), None)
        .await
        .unwrap();
    assert_eq!(cp.protocol.as_deref(), Some("ocpp1.6"));

    // Standalone: the charger's first choice that the gateway can answer
    // itself (1.6), so it is served rather than cut off.
    let alone = Gateway::start(None, "").await;
    let got = py_charger(&alone, "PY-ALONE", "ocpp2.0.1,ocpp1.6").await;
    assert_eq!(got[0]["subprotocol"], "ocpp1.6", "{got:?}");
}

#[tokio::test]
async fn a_charger_connected_while_the_cloud_was_away_is_moved_to_the_clouds_choice() {
    // A port with nothing behind it yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(Some(&format!("ws://127.0.0.1:{port}/ocpp")), "").await;
    let mut cp = connect_status(&gw.url("CP-LATE"), Some("ocpp2.0.1, ocpp1.6"), None)
        .await
        .unwrap();
    assert_eq!(
        cp.protocol.as_deref(),
        Some("ocpp1.6"),
        "the cloud is away: what the gateway can answer itself"
    );
    let boot = cp.call("BootNotification", boot()).await;
    assert_eq!(boot[2]["status"], "Accepted", "answered locally: {boot}");

    // The cloud comes up speaking 2.0.1 only: the charger is asked to
    // reconnect (1012, service restart) and is then given 2.0.1.
    let mut cloud = PyCsms::start("ocpp2.0.1", port).await;
    assert_eq!(cp.closed().await, Some(1012));
    let again = connect_status(&gw.url("CP-LATE"), Some("ocpp2.0.1, ocpp1.6"), None)
        .await
        .unwrap();
    assert_eq!(again.protocol.as_deref(), Some("ocpp2.0.1"));
    let c = cloud.expect("csms_connected", "CP-LATE").await;
    assert_eq!(c["subprotocol"], "ocpp2.0.1");
}

/// Check call payloads against the official 2.0.1 schemas (Python `ocpp`).
async fn schema_201(calls: &[(String, Value)]) -> Vec<Value> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("python3")
        .args([PEER, "validate", "2.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for (action, payload) in calls {
        input.push_str(&format!("{action}\t{payload}\n"));
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn the_seeds_remote_actions_reach_a_201_charger_in_201() {
    use chargegate::api::ActionResult;
    use chargegate::client::ApiClient;
    use serde_json::json;

    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "[api]\nforce_stop_wait_secs = 1\n").await;
    let mut cp = connect_status(&gw.url("CP-A201"), Some("ocpp2.0.1"), None)
        .await
        .unwrap();
    csms.next_connect().await;
    cp.call(
        "TransactionEvent",
        json!({"eventType": "Started", "timestamp": "2030-01-01T00:00:00Z", "triggerReason": "Authorized",
               "seqNo": 0, "transactionInfo": {"transactionId": "tx-201", "chargingState": "Charging"},
               "evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": "TAG", "type": "ISO14443"}}),
    )
    .await;
    gw.wait_event("CP-A201", "StartTransaction", |e| {
        e["transaction_ref"] == "tx-201"
    })
    .await;
    let api = ApiClient {
        addr: gw.running.as_ref().unwrap().api_addr,
        token: None,
    };
    let mut sent = Vec::new();
    for (name, body, expect) in [
        ("reboot", json!({}), "Reset"),
        ("reboot", json!({"hard": true}), "Reset"),
        (
            "start",
            json!({"id_tag": "STAFF"}),
            "RequestStartTransaction",
        ),
        ("stop", json!({}), "RequestStopTransaction"),
        ("unlock", json!({}), "UnlockConnector"),
        ("disable", json!({"connector": 1}), "ChangeAvailability"),
        (
            "trigger",
            json!({"message": "MeterValues"}),
            "TriggerMessage",
        ),
        ("get-config", json!({}), "GetVariables"),
        (
            "change-config",
            json!({"key": "SampledDataCtrlr.TxUpdatedInterval", "value": "60"}),
            "SetVariables",
        ),
    ] {
        let call = tokio::spawn({
            let api = api.clone();
            async move {
                api.post::<ActionResult>(&format!("/api/v1/chargers/CP-A201/actions/{name}"), &body)
                    .await
                    .unwrap()
            }
        });
        let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
        assert_eq!(
            (v[0].as_i64(), v[2].as_str()),
            (Some(2), Some(expect)),
            "{name}: {v}"
        );
        let id = v[1].as_str().unwrap();
        assert!(
            id.len() <= 36,
            "2.0.1 message ids are at most 36 characters: {id}"
        );
        cp.send(&json!([3, id, {"status": "Accepted"}]).to_string())
            .await;
        let r = call.await.unwrap();
        assert_eq!(r.outcome, "result", "{name}");
        sent.push((expect.to_string(), v[3].clone()));
    }
    assert_eq!(
        sent[3].1["transactionId"], "tx-201",
        "stop names the 2.0.1 transaction"
    );
    for (verdict, (action, payload)) in schema_201(&sent).await.iter().zip(&sent) {
        assert_eq!(verdict["ok"], true, "{action} {payload}: {verdict}");
    }
    assert_eq!(schema_201(&sent).await.len(), sent.len());

    // Force stop: the 2.0.1 steps, then closed in the journal as forced.
    let call = tokio::spawn({
        let api = api.clone();
        async move {
            api.post::<Value>("/api/v1/chargers/CP-A201/actions/force-stop", &json!({}))
                .await
                .unwrap()
        }
    });
    let mut steps = Vec::new();
    for _ in 0..4 {
        let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
        cp.send(&json!([3, v[1], {"status": "Accepted"}]).to_string())
            .await;
        steps.push((v[2].as_str().unwrap().to_string(), v[3].clone()));
    }
    let names: Vec<&str> = steps.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "RequestStopTransaction",
            "ChangeAvailability",
            "UnlockConnector",
            "Reset"
        ]
    );
    assert_eq!(steps[3].1["type"], "Immediate");
    for verdict in schema_201(&steps).await {
        assert_eq!(verdict["ok"], true, "{verdict}");
    }
    let answer = call.await.unwrap();
    assert_eq!(answer["call"], "RequestStopTransaction (escalating)");
    let report = &answer["result"];
    assert_eq!(report["closed_by_gateway"], true, "{report}");
    assert_eq!(report["transaction_id"], "tx-201");
    gw.wait_event("CP-A201", "StopTransaction", |e| {
        e["transaction_ref"] == "tx-201" && e["forced"] == true
    })
    .await;
    assert!(gw.journal().state().chargers["CP-A201"]
        .transactions
        .is_empty());
}

#[tokio::test]
async fn a_pause_reaches_a_201_charger_as_a_201_profile_and_suspends_it() {
    use chargegate::client::ApiClient;
    use serde_json::json;

    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = connect_status(&gw.url("CP-P201"), Some("ocpp2.0.1"), None)
        .await
        .unwrap();
    csms.next_connect().await;
    cp.call(
        "TransactionEvent",
        json!({"eventType": "Started", "timestamp": "2030-01-01T00:00:00Z", "triggerReason": "Authorized",
               "seqNo": 0, "transactionInfo": {"transactionId": "tx-p", "chargingState": "Charging"},
               "evse": {"id": 1, "connectorId": 1}}),
    )
    .await;
    let api = ApiClient {
        addr: gw.running.as_ref().unwrap().api_addr,
        token: None,
    };
    let paused = api
        .post::<Value>("/api/v1/chargers/CP-P201/actions/pause", &json!({}))
        .await
        .unwrap();
    assert_eq!(paused["outcome"], "result", "{paused}");
    // Profiles come in 2.0.1 until one holds the charger at 0 A.
    let mut sent = Vec::new();
    let zero = tokio::time::timeout(WAIT, async {
        loop {
            let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
            cp.send(&json!([3, v[1], {"status": "Accepted"}]).to_string())
                .await;
            sent.push((v[2].as_str().unwrap().to_string(), v[3].clone()));
            let limits = &v[3]["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"];
            if v[2] == "SetChargingProfile" && limits[0]["limit"] == 0.0 {
                return v[3].clone();
            }
        }
    })
    .await
    .expect("a 0 A profile");
    assert_eq!(zero["evseId"], 0);
    assert_eq!(
        zero["chargingProfile"]["chargingProfilePurpose"],
        "ChargingStationMaxProfile"
    );
    for (verdict, (action, payload)) in schema_201(&sent).await.iter().zip(&sent) {
        assert_eq!(verdict["ok"], true, "{action} {payload}: {verdict}");
    }
    // The charger suspends: the journal says SuspendedEVSE, as for 1.6.
    cp.call(
        "TransactionEvent",
        json!({"eventType": "Updated", "timestamp": "2030-01-01T00:01:00Z", "triggerReason": "ChargingRateChanged",
               "seqNo": 1, "transactionInfo": {"transactionId": "tx-p", "chargingState": "SuspendedEVSE"}}),
    )
    .await;
    gw.wait_event("CP-P201", "StatusNotification", |e| {
        e["status"] == "SuspendedEVSE" && e["connector"] == 1
    })
    .await;
}

/// `chargegate sim --ocpp 2.0.1` through the gateway to the Python 2.0.1
/// CSMS, which checks every message against the official schemas: whole
/// sessions, journaled as for 1.6, and a pause reaching SuspendedEVSE.
#[tokio::test]
async fn the_simulator_speaks_201_as_the_official_schemas_say() {
    use chargegate::client::ApiClient;
    use serde_json::json;

    let mut cloud = PyCsms::start("ocpp2.0.1", 0).await;
    let gw = Gateway::start(Some(&cloud.url()), "").await;
    let opts = chargegate::sim::SimOptions {
        prefix: "S201-".into(),
        meter_interval: Duration::from_millis(300),
        meter_values_per_session: 1_000,
        idle: Duration::from_millis(100),
        duration: Some(Duration::from_secs(30)),
        ocpp: chargegate::ocpp::Protocol::Ocpp201,
        ..chargegate::sim::SimOptions::new(format!("ws://{}/ocpp", gw.ocpp), 1)
    };
    let stats = std::sync::Arc::new(chargegate::sim::SimStats::default());
    let sim = tokio::spawn(chargegate::sim::run_with(opts, stats.clone()));
    cloud.expect("csms_got", "BootNotification").await;
    let started = cloud.expect("csms_got", "TransactionEvent").await;
    assert_eq!(started["event_type"], "Started");
    gw.wait_event("S201-1", "StartTransaction", |e| {
        e["transaction_ref"]
            .as_str()
            .is_some_and(|t| t.starts_with("S201-1-tx-"))
    })
    .await;
    gw.wait_event("S201-1", "MeterValues", |e| {
        e["transaction_ref"].is_string()
    })
    .await;

    // A pause: a 2.0.1 profile, and the simulated charger suspends.
    let api = ApiClient {
        addr: gw.running.as_ref().unwrap().api_addr,
        token: None,
    };
    let r: Value = api
        .post("/api/v1/chargers/S201-1/actions/pause", &json!({}))
        .await
        .unwrap();
    assert_eq!(r["outcome"], "result");
    gw.wait_event("S201-1", "StatusNotification", |e| {
        e["status"] == "SuspendedEVSE"
    })
    .await;
    gw.wait_event("S201-1", "RemoteAction", |e| {
        e["action"] == "SetChargingProfile"
            && e["request"]["chargingProfile"]["chargingProfilePurpose"]
                == "ChargingStationMaxProfile"
            && e["result"]["status"] == "Accepted"
    })
    .await;
    // A remote stop in 2.0.1 ends it.
    let r: Value = api
        .post("/api/v1/chargers/S201-1/actions/stop", &json!({}))
        .await
        .unwrap();
    assert_eq!(r["call"], "RequestStopTransaction", "{r}");
    gw.wait_event("S201-1", "StopTransaction", |e| e["reason"] == "Remote")
        .await;
    assert_eq!(
        stats.errors.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the schema-checking CSMS refused nothing the simulator sent"
    );
    sim.abort();
}

/// A 2.0.1 TransactionEvent of transaction `h-tx` on EVSE 1.
fn tx_event_201(seq: i64, kind: &str, trigger: &str, wh: f64) -> Value {
    let mut v = serde_json::json!({
        "eventType": kind, "timestamp": format!("2026-01-01T10:{seq:02}:00Z"),
        "triggerReason": trigger, "seqNo": seq,
        "transactionInfo": {"transactionId": "h-tx"},
        "evse": {"id": 1, "connectorId": 1},
        "meterValue": [{"timestamp": format!("2026-01-01T10:{seq:02}:00Z"),
            "sampledValue": [{"value": wh, "measurand": "Energy.Active.Import.Register"}]}],
    });
    match kind {
        "Started" => {
            v["idToken"] = serde_json::json!({"idToken": "HTAG", "type": "ISO14443"});
            v["transactionInfo"]["chargingState"] = "Charging".into();
        }
        "Ended" => v["transactionInfo"]["stoppedReason"] = "Local".into(),
        _ => {}
    }
    v
}

#[tokio::test]
async fn a_201_charger_held_through_an_outage_reaches_a_201_cloud_in_order_marked_offline() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(
        Some(&format!("ws://127.0.0.1:{port}/ocpp")),
        "[offline]\nmode_ocpp201 = \"hold\"\n",
    )
    .await;
    let mut cp = connect_status(&gw.url("CP-H201"), Some("ocpp2.0.1, ocpp1.6"), None)
        .await
        .unwrap();
    assert_eq!(
        cp.protocol.as_deref(),
        Some("ocpp2.0.1"),
        "held offline in 2.0.1 too: the charger's first choice"
    );
    let boot = serde_json::json!({"reason": "PowerUp",
        "chargingStation": {"model": "HoldModel", "vendorName": "HoldVendor"}});
    let a = cp.call("BootNotification", boot).await;
    assert_eq!(a[2]["status"], "Accepted", "answered by the gateway: {a}");
    let status = serde_json::json!({"timestamp": "2026-01-01T10:00:00Z",
        "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1});
    assert_eq!(
        cp.call("StatusNotification", status).await[2],
        serde_json::json!({})
    );
    let a = cp
        .call(
            "Authorize",
            serde_json::json!({"idToken": {"idToken": "HTAG", "type": "ISO14443"}}),
        )
        .await;
    assert_eq!(a[2]["idTokenInfo"]["status"], "Accepted", "{a}");
    let mut sent = vec![tx_event_201(0, "Started", "Authorized", 100.0)];
    for seq in 1..=3 {
        sent.push(tx_event_201(
            seq,
            "Updated",
            "MeterValuePeriodic",
            100.0 + 50.0 * seq as f64,
        ));
    }
    sent.push(tx_event_201(4, "Ended", "StopAuthorized", 300.0));
    for (k, ev) in sent.iter().enumerate() {
        let a = cp.call("TransactionEvent", ev.clone()).await;
        assert_eq!(a[0], 3, "the charger never sees an error: {a}");
        if k == 0 {
            assert_eq!(a[2]["idTokenInfo"]["status"], "Accepted", "{a}");
        }
    }
    assert_eq!(
        gw.journal().outbox("CP-H201").unwrap().len(),
        5,
        "queued durably"
    );
    // The journal reads as for a 1.6 charger, answered by the gateway.
    let ev = gw.wait_event("CP-H201", "StopTransaction", |_| true).await;
    assert_eq!(ev["transaction_ref"], "h-tx");
    assert_eq!(ev["answered_by"], "gateway", "{ev}");

    // The cloud comes up (2.0.1 only, checking every message against the
    // official schemas): the missed boot first, the events in order with
    // their seqNo and `offline: true`, then the latest status.
    let mut cloud = PyCsms::start("ocpp2.0.1", port).await;
    let c = cloud.expect("csms_connected", "CP-H201").await;
    assert_eq!(c["subprotocol"], "ocpp2.0.1");
    let b = cloud.expect("csms_got", "BootNotification").await;
    assert_eq!(b["vendor"], "HoldVendor");
    for seq in 0..=4 {
        let ev = cloud.expect("csms_got", "TransactionEvent").await;
        assert_eq!(
            (ev["seq_no"].as_i64(), ev["offline"].as_bool()),
            (Some(seq), Some(true)),
            "{ev}"
        );
    }
    let s = cloud.expect("csms_got", "StatusNotification").await;
    assert_eq!(s["status"], "Occupied");
    for _ in 0..100 {
        if gw.journal().outbox("CP-H201").unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.journal().outbox("CP-H201").unwrap().is_empty(),
        "all delivered"
    );
    assert!(
        gw.wait_count("CP-H201", "Replayed", 7).await >= 7,
        "boot, five events, status"
    );
}
