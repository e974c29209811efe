//! The relay between real chargers' sockets and a real CSMS socket.

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn frames_are_relayed_byte_for_byte_both_ways() {
    let mut csms = Csms::start(Arc::new(|action: &str, _: &Value| match action {
        "BootNotification" => None, // answered by hand below, with odd spacing
        _ => Some(json!({})),
    }))
    .await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = Charger::connect(&gw.url("CP-1")).await;
    let (id, proto, _) = csms.next_connect().await;
    assert_eq!((id.as_str(), proto.as_deref()), ("CP-1", Some("ocpp1.6")));

    let boot = r#"[2,  "b-1","BootNotification",{"chargePointVendor":"V\u00e9","chargePointModel":"M",  "firmwareVersion":"9.9"}]"#;
    cp.send(boot).await;
    assert_eq!(
        csms.next_frame("CP-1").await,
        boot,
        "charger → cloud unchanged"
    );
    let answer =
        r#"[3,"b-1",{ "status":"Accepted","currentTime":"2026-01-01T00:00:00Z","interval":  77 }]"#;
    csms.send("CP-1", answer);
    assert_eq!(cp.recv().await, answer, "cloud → charger unchanged");

    let reset = r#"[2,"r-9","Reset",{"type":"Soft"} ]"#;
    csms.send("CP-1", reset);
    assert_eq!(cp.recv().await, reset);
    let reset_ok = r#"[3,"r-9",{"status":"Accepted"}]"#;
    cp.send(reset_ok).await;
    assert_eq!(csms.next_frame("CP-1").await, reset_ok);

    let ev = gw.wait_event("CP-1", "BootNotification", |_| true).await;
    assert_eq!(
        (
            ev["vendor"].as_str(),
            ev["firmware"].as_str(),
            ev["status"].as_str()
        ),
        (Some("Vé"), Some("9.9"), Some("Accepted"))
    );
    assert_eq!(ev["answered_by"], "cloud");
    let ev = gw.wait_event("CP-1", "RemoteAction", |_| true).await;
    assert_eq!(
        (ev["action"].as_str(), ev["source"].as_str()),
        (Some("Reset"), Some("cloud"))
    );
    assert_eq!(ev["request"]["type"], "Soft");
    assert_eq!(ev["result"]["status"], "Accepted");
}

#[tokio::test]
async fn both_links_connect_and_disconnect_are_journaled_with_reasons() {
    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = Charger::connect(&gw.url("CP-2")).await;
    csms.next_connect().await;
    cp.call("BootNotification", boot()).await;
    gw.wait_event("CP-2", "Connect", |e| e["link"] == "charger")
        .await;
    gw.wait_event("CP-2", "Connect", |e| e["link"] == "cloud")
        .await;

    cp.close().await;
    csms.next_close("CP-2").await; // the cloud sees the charger go
    let ev = gw
        .wait_event("CP-2", "Disconnect", |e| e["link"] == "charger")
        .await;
    assert_eq!(ev["code"], 1000);
    assert_eq!(ev["reason"], "bye");
    gw.wait_event("CP-2", "Disconnect", |e| {
        e["link"] == "cloud" && e["reason"] == "charger disconnected"
    })
    .await;
    let st = gw.journal().state();
    assert!(!st.chargers["CP-2"].charger_link.up && !st.chargers["CP-2"].cloud_link.up);
}

#[tokio::test]
async fn cloud_outage_is_answered_locally_and_the_link_comes_back() {
    let mut csms = Csms::start(default_answers()).await;
    let addr = csms.addr;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = Charger::connect(&gw.url("CP-3")).await;
    csms.next_connect().await;
    let a = cp.call("BootNotification", boot()).await;
    assert_eq!(a[2]["interval"], 300, "the cloud's answer");

    csms.kill();
    gw.wait_event("CP-3", "Disconnect", |e| e["link"] == "cloud")
        .await;
    // The charger keeps working: the gateway answers.
    let a = cp.call("StartTransaction", json!({"connectorId": 1, "idTag": "T1", "meterStart": 10, "timestamp": "2026-01-01T00:00:00Z"})).await;
    let tx = a[2]["transactionId"].as_i64().unwrap();
    assert!(tx < 0, "local transaction ids are negative: {a}");
    let ev = gw.wait_event("CP-3", "StartTransaction", |_| true).await;
    assert_eq!(
        (ev["transaction_id"].as_i64(), ev["answered_by"].as_str()),
        (Some(tx), Some("gateway"))
    );

    // The cloud returns on the same address; the gateway reconnects by itself.
    let mut csms = Csms::start_on(&addr.to_string(), default_answers()).await;
    let (id, _, _) = csms.next_connect().await;
    assert_eq!(id, "CP-3");
    gw.wait_event("CP-3", "Connect", |e| {
        e["link"] == "cloud" && e["seq"].as_u64() > ev["seq"].as_u64()
    })
    .await;
    // The StartTransaction answered offline is delivered first (one CALL at a time).
    gw.wait_event("CP-3", "Replayed", |e| e["action"] == "StartTransaction")
        .await;
    let a = cp.call("Heartbeat", json!({})).await;
    assert_eq!(
        a[2]["currentTime"], "2026-01-01T00:00:00Z",
        "answered by the cloud again"
    );
}

#[tokio::test]
async fn a_cloud_that_never_answers_is_covered_by_the_call_timeout() {
    let mut csms = Csms::start(Arc::new(|_: &str, _: &Value| None)).await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = Charger::connect(&gw.url("CP-4")).await;
    csms.next_connect().await;
    let a = cp.call("BootNotification", boot()).await;
    assert_eq!(
        a[2]["status"], "Accepted",
        "the gateway answered after call_timeout: {a}"
    );
    let ev = gw.wait_event("CP-4", "BootNotification", |_| true).await;
    assert_eq!(ev["answered_by"], "gateway");
}

/// Keepalive when nothing else is going on (the session's housekeeping
/// tick then sleeps until the next ping is due): an idle charger is pinged
/// every interval, and one that never answers is closed after two
/// intervals and the grace period, while the other carries on.
#[tokio::test]
async fn idle_chargers_are_pinged_and_one_that_never_answers_is_closed() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let gw = Gateway::start(None, "[ocpp]\nping_interval_secs = 1\n").await;
    let mut live = Charger::connect(&gw.url("CP-PING")).await;
    // Never reads, so its pongs never go out.
    let _mute = Charger::connect(&gw.url("CP-MUTE")).await;
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(3500);
    let mut pings = 0;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, live.ws.next()).await {
        if matches!(msg, Message::Ping(_)) {
            pings += 1;
        }
    }
    assert!(pings >= 2, "{pings} pings in 3.5 s at a 1-s interval");
    let ev = gw
        .wait_event("CP-MUTE", "Disconnect", |e| e["link"] == "charger")
        .await;
    assert_eq!(ev["reason"], "no answer to pings", "{ev}");
    assert_eq!(live.call("Heartbeat", json!({})).await[0], 3);
    assert!(
        !gw.events("CP-PING")
            .iter()
            .any(|r| r.event.kind() == "Disconnect"),
        "the charger that answers pings stays connected"
    );
}

#[tokio::test]
async fn a_second_connection_replaces_the_first_cleanly() {
    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut first = Charger::connect(&gw.url("CP-5")).await;
    csms.next_connect().await;
    let mut second = Charger::connect(&gw.url("CP-5")).await;
    assert_eq!(first.closed().await, Some(1000));
    csms.next_close("CP-5").await;
    let (id, _, _) = csms.next_connect().await;
    assert_eq!(
        id, "CP-5",
        "the new connection gets its own cloud link, after the old one closed"
    );
    let a = second.call("Heartbeat", json!({})).await;
    assert_eq!(a[0], 3);
    gw.wait_event("CP-5", "Disconnect", |e| {
        e["reason"] == "replaced by a new connection"
    })
    .await;
}

#[tokio::test]
async fn credentials_pass_through_or_come_from_the_config() {
    let mut csms = Csms::start(default_answers()).await;
    let extra = "[[charger]]\nid = \"CP-A\"\npassword = \"charger-pass-123\"\n[[charger]]\nid = \"CP-B\"\npassword = \"charger-pass-456\"\nupstream_password = \"cloud-pass-789\"\n";
    let gw = Gateway::start(Some(&csms.url()), extra).await;
    let basic = chargegate::upstream::basic_auth("CP-A", "charger-pass-123");
    let _a = connect_status(&gw.url("CP-A"), Some("ocpp1.6"), Some(&basic))
        .await
        .unwrap();
    let (_, _, auth) = csms.next_connect().await;
    assert_eq!(auth.as_deref(), Some(basic.as_str()), "passed through");
    let basic_b = chargegate::upstream::basic_auth("CP-B", "charger-pass-456");
    let _b = connect_status(&gw.url("CP-B"), Some("ocpp1.6"), Some(&basic_b))
        .await
        .unwrap();
    let (_, _, auth) = csms.next_connect().await;
    assert_eq!(
        auth,
        Some(chargegate::upstream::basic_auth("CP-B", "cloud-pass-789")),
        "from the config"
    );
}

#[tokio::test]
async fn a_close_from_either_side_is_answered_with_a_close_frame() {
    let mut csms = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = Charger::connect(&gw.url("CP-BYE")).await;
    csms.next_connect().await;
    // The cloud closes (1000): it gets the gateway's close frame back, not
    // a dropped connection (RFC 6455 §5.5.1).
    csms.close("CP-BYE");
    assert_eq!(csms.next_close_frame("CP-BYE").await, Some(1000));
    // The charger closes: the same.
    cp.ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            match cp.ws.next().await {
                Some(Ok(Message::Close(f))) => return Some(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("in time");
    assert_eq!(answer, Some(Some(1000)), "a close frame, not 1006");
}

#[tokio::test]
async fn ocpp201_is_relayed_as_is_and_closed_when_the_cloud_is_gone() {
    let mut csms = Csms::start(Arc::new(|_: &str, _: &Value| {
        Some(json!({"status": "Accepted", "currentTime": "2026-01-01T00:00:00Z", "interval": 60}))
    }))
    .await;
    let gw = Gateway::start(Some(&csms.url()), "").await;
    let mut cp = connect_status(&gw.url("CP-201"), Some("ocpp2.0.1"), None)
        .await
        .unwrap();
    let (_, proto, _) = csms.next_connect().await;
    assert_eq!(proto.as_deref(), Some("ocpp2.0.1"));
    let boot = r#"[2,"u1","BootNotification",{"reason":"PowerUp","chargingStation":{"model":"M","vendorName":"V"}}]"#;
    cp.send(boot).await;
    assert_eq!(csms.next_frame("CP-201").await, boot);
    let a: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(a[2]["status"], "Accepted");
    csms.kill();
    assert_eq!(
        cp.closed().await,
        Some(1013),
        "2.0.1 chargers queue by themselves: Try Again Later"
    );
}

use std::sync::Arc;
