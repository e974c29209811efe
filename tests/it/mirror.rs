//! A second backend: every charger mirrored to another CSMS (the Python
//! `ocpp` package's, which checks every message against the official 1.6
//! schemas), with its own transaction ids, read-only unless allowed, and
//! independent of the primary.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::harness::*;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/ocpp_peer.py");

/// The Python 1.6 CSMS as a mirror (it hands out transaction id 777 and
/// sends a Reset after every BootNotification).
struct PyMirror {
    port: u16,
    out: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl PyMirror {
    async fn start(port: u16) -> PyMirror {
        let mut child = tokio::process::Command::new("python3")
            .args([PEER, "csms", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, out.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the Python CSMS started");
        let port = first.strip_prefix("PORT ").unwrap().parse().unwrap();
        PyMirror {
            port,
            out,
            _child: child,
        }
    }

    /// Its event lines until one has `key` = `value`.
    async fn until(&mut self, key: &str, value: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        tokio::time::timeout(WAIT, async {
            loop {
                let line = self.out.next_line().await.unwrap().expect("running");
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let hit = v[key] == value;
                seen.push(v);
                if hit {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {key}={value} from the mirror; saw {seen:?}"));
        seen
    }
}

fn mirror_section(port: u16, extra: &str) -> String {
    format!("[[mirror]]\nname = \"py\"\nurl = \"ws://127.0.0.1:{port}/ocpp\"\nbackoff_min_secs = 0\nbackoff_max_secs = 1\n{extra}")
}

/// A session as a charger runs it; returns the primary's transaction id.
async fn session(cp: &mut Charger) -> i64 {
    cp.call("BootNotification", boot()).await;
    cp.call(
        "StatusNotification",
        json!({"connectorId": 1, "errorCode": "NoError", "status": "Charging"}),
    )
    .await;
    let tx = cp
        .call(
            "StartTransaction",
            json!({"connectorId": 1, "idTag": "TAG1", "meterStart": 100, "timestamp": "2030-01-01T00:00:00Z"}),
        )
        .await[2]["transactionId"]
        .as_i64()
        .unwrap();
    let mv = json!({"connectorId": 1, "transactionId": tx, "meterValue": [{"timestamp": "2030-01-01T00:05:00Z",
        "sampledValue": [{"value": "150", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]});
    cp.call("MeterValues", mv).await;
    cp.call(
        "StopTransaction",
        json!({"transactionId": tx, "meterStop": 200, "timestamp": "2030-01-01T00:10:00Z", "reason": "Local"}),
    )
    .await;
    tx
}

fn mirrored(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let got = l["csms_got"].as_str()?;
            Some(match l.get("transaction_id").filter(|t| !t.is_null()) {
                Some(t) => format!("{got} {t}"),
                None => got.to_string(),
            })
        })
        .collect()
}

#[tokio::test]
async fn a_session_reaches_both_backends_with_their_own_transaction_ids() {
    let mut primary = Csms::start(default_answers()).await;
    let mut mirror = PyMirror::start(0).await;
    let gw = Gateway::start(Some(&primary.url()), &mirror_section(mirror.port, "")).await;
    let mut cp = Charger::connect(&gw.url("CP-M1")).await;
    primary.next_connect().await;
    let tx = session(&mut cp).await;
    assert_eq!(tx, 4242, "the primary decides what the charger is told");
    let lines = mirror.until("csms_got", "StopTransaction").await;
    assert_eq!(
        mirrored(&lines),
        [
            "BootNotification",
            "StatusNotification",
            "StartTransaction",
            "MeterValues 777",
            "StopTransaction 777"
        ],
        "in order, with the mirror's own transaction id: {lines:?}"
    );
    // The mirror's Reset (sent after the boot) is refused: read-only.
    assert!(
        lines.iter().any(|l| l["reset_result"] == "error"),
        "the mirror got a CALLERROR: {lines:?}"
    );
    gw.wait_event("CP-M1", "RemoteAction", |e| {
        e["action"] == "Reset" && e["source"] == "mirror" && e["part_of"] == "mirror:py"
    })
    .await;
    gw.wait_event("CP-M1", "MirrorConnect", |e| e["mirror"] == "py")
        .await;
    let st = gw.journal().state();
    assert!(
        st.chargers["CP-M1"].mirrors["py"].up,
        "status shows the mirror link"
    );
    // The charger saw the primary only: no Reset reached it.
    cp.send(&json!([2, "hb", "Heartbeat", {}]).to_string())
        .await;
    let v: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(
        v[1], "hb",
        "the next frame is the heartbeat's answer, not a Reset"
    );
}

#[tokio::test]
async fn a_mirrors_calls_reach_the_charger_when_allowed() {
    let primary = Csms::start(default_answers()).await;
    let mut mirror = PyMirror::start(0).await;
    let gw = Gateway::start(
        Some(&primary.url()),
        &mirror_section(mirror.port, "allow = [\"Reset\"]\n"),
    )
    .await;
    let mut cp = Charger::connect(&gw.url("CP-M2")).await;
    cp.call("BootNotification", boot()).await;
    let reset: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(
        (reset[0].as_i64(), reset[2].as_str()),
        (Some(2), Some("Reset"))
    );
    cp.send(&json!([3, reset[1], {"status": "Accepted"}]).to_string())
        .await;
    let lines = mirror.until("reset_result", "Accepted").await;
    assert!(!lines.is_empty());
    gw.wait_event("CP-M2", "RemoteAction", |e| {
        e["action"] == "Reset" && e["source"] == "mirror" && e["result"]["status"] == "Accepted"
    })
    .await;
}

#[tokio::test]
async fn a_mirror_down_for_a_whole_session_gets_it_afterwards_in_order() {
    let mut primary = Csms::start(default_answers()).await;
    let port = free_addr().port();
    let gw = Gateway::start(Some(&primary.url()), &mirror_section(port, "")).await;
    let mut cp = Charger::connect(&gw.url("CP-M3")).await;
    primary.next_connect().await;
    // The primary answers at once, the mirror being away.
    let started = std::time::Instant::now();
    session(&mut cp).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    gw.wait_event("CP-M3", "MirrorDisconnect", |e| e["mirror"] == "py")
        .await;
    cp.close().await;
    // The mirror comes up after the charger left: it gets the session.
    let mut mirror = PyMirror::start(port).await;
    let lines = mirror.until("csms_got", "StopTransaction").await;
    assert_eq!(
        mirrored(&lines),
        [
            "BootNotification",
            "StatusNotification",
            "StartTransaction",
            "MeterValues 777",
            "StopTransaction 777"
        ]
    );
}

#[tokio::test]
#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn a_mirror_sending_garbage_is_contained() {
    // A "CSMS" that answers every frame with garbage and floods more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let cb = |_: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          mut r: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    r.headers_mut().insert("Sec-WebSocket-Protocol", "ocpp1.6".parse().unwrap());
                    Ok(r)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
                    return;
                };
                for i in 0..500 {
                    let junk = [
                        "not json",
                        "[9,9,9]",
                        "[3]",
                        "{\"a\":1}",
                        "[2,\"x\",\"Reset\"]",
                    ][i % 5];
                    if ws
                        .send(tokio_tungstenite::tungstenite::Message::text(junk))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    let mut primary = Csms::start(default_answers()).await;
    let gw = Gateway::start(Some(&primary.url()), &mirror_section(port, "")).await;
    let mut cp = Charger::connect(&gw.url("CP-M4")).await;
    primary.next_connect().await;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let tx = session(&mut cp).await;
        assert_eq!(tx, 4242);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // The gateway still serves, and never relayed the junk to anyone.
    assert_eq!(
        cp.call("Heartbeat", json!({})).await[2]["currentTime"],
        "2026-01-01T00:00:00Z"
    );
}

#[tokio::test]
async fn a_standalone_site_is_mirrored_with_each_chargers_own_credentials() {
    let mut mirror = Csms::start(default_answers()).await;
    let extra = format!(
        "[[mirror]]\nname = \"monitor\"\nurl = \"{}\"\npassword = \"shared-password-1234\"\n[mirror.passwords]\n\"CP-OWN\" = \"own-password-12345\"\n",
        mirror.url()
    );
    let gw = Gateway::start(None, &extra).await;
    let mut own = Charger::connect(&gw.url("CP-OWN")).await;
    let (id, _, auth) = mirror.next_connect().await;
    assert_eq!(id, "CP-OWN");
    assert_eq!(
        auth,
        Some(chargegate::upstream::basic_auth(
            "CP-OWN",
            "own-password-12345"
        ))
    );
    let _other = Charger::connect(&gw.url("CP-SHARED")).await;
    let (id, _, auth) = mirror.next_connect().await;
    assert_eq!(id, "CP-SHARED");
    assert_eq!(
        auth,
        Some(chargegate::upstream::basic_auth(
            "CP-SHARED",
            "shared-password-1234"
        ))
    );
    // Standalone: the gateway answers, the mirror sees it.
    let boot = own.call("BootNotification", boot()).await;
    assert_eq!(boot[2]["status"], "Accepted");
    let frame: Value = serde_json::from_str(&mirror.next_frame("CP-OWN").await).unwrap();
    assert_eq!(frame[2], "BootNotification");
}
