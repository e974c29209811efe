//! The web page in a real browser: headless Chromium (Debian's, installed
//! by .ci/run) driven over the DevTools protocol on a WebSocket. Opens a
//! charger's page with a token link, clicks "Reboot charge point", sees the
//! charger's answer and then the new lines in "View logs", live. Leaves a
//! screenshot in target/test-output/.

use std::process::Stdio;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools protocol session on one page.
struct Page {
    ws: Ws,
    session: String,
    next: u64,
}

async fn send(
    ws: &mut Ws,
    next: &mut u64,
    session: Option<&str>,
    method: &str,
    params: Value,
) -> Value {
    *next += 1;
    let mut msg = json!({"id": *next, "method": method, "params": params});
    if let Some(s) = session {
        msg["sessionId"] = s.into();
    }
    ws.send(Message::text(msg.to_string())).await.unwrap();
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("DevTools answers")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == *next {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }
}

impl Page {
    async fn open(browser_ws: &str, url: &str) -> Page {
        let (mut ws, _) = tokio_tungstenite::connect_async(browser_ws).await.unwrap();
        let mut next = 0;
        let target = send(
            &mut ws,
            &mut next,
            None,
            "Target.createTarget",
            json!({"url": url}),
        )
        .await;
        let attached = send(
            &mut ws,
            &mut next,
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
        let session = attached["sessionId"].as_str().unwrap().to_string();
        Page { ws, session, next }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        send(&mut self.ws, &mut self.next, Some(&s), method, params).await
    }

    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Wait until `js` evaluates to a string containing `want`.
    async fn wait_text(&mut self, js: &str, want: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.eval(js).await;
            let text = v.as_str().unwrap_or("").to_string();
            if text.contains(want) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "page never showed {want:?}; last: {text:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

async fn chromium(profile: &std::path::Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=430,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("Debian's chromium is installed (.ci/run: apt-get install chromium)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(u) = line.split("DevTools listening on ").nth(1) {
                return u.trim().to_string();
            }
        }
        panic!("chromium exited without a DevTools address");
    })
    .await
    .expect("chromium starts");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[tokio::test]
async fn the_web_page_runs_a_remote_action_and_shows_the_new_log_line() {
    let gw = Gateway::start(None, "[api]\ntoken = \"web-token-123\"\n").await;
    let mut cp = Charger::connect(&gw.url("CP-WEB")).await;
    cp.call("BootNotification", boot()).await;
    cp.call(
        "StatusNotification",
        json!({"connectorId": 1, "errorCode": "NoError", "status": "Charging"}),
    )
    .await;
    let api = gw.running.as_ref().unwrap().api_addr;

    let profile = tempfile::tempdir().unwrap();
    let (mut browser, devtools) = chromium(profile.path()).await;
    let mut page = Page::open(
        &devtools,
        &format!("http://{api}/?token=web-token-123#/charger/CP-WEB"),
    )
    .await;

    // "Remote actions": the seed's actions, as buttons.
    let buttons = page
        .wait_text(
            "[...document.querySelectorAll('button[data-a]')].map(b => b.textContent).join('|')",
            "Run a check",
        )
        .await;
    assert_eq!(
        buttons,
        "Reboot charge point|Start charge|Stop charge|Force stop charging|Run a check"
    );
    page.eval("document.querySelector('button[data-a=reboot]').click()")
        .await;
    let reset: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(reset[2], "Reset");
    cp.send(&json!([3, reset[1], {"status": "Accepted"}]).to_string())
        .await;
    let result = page
        .wait_text("document.getElementById('result').textContent", "Accepted")
        .await;
    assert_eq!(result, "Reboot charge point: Reset → Accepted");

    // "Connection → View logs", updated live.
    page.eval("document.getElementById('t-logs').click()").await;
    let log = page
        .wait_text(
            "document.getElementById('log') ? document.getElementById('log').textContent : ''",
            "RemoteAction",
        )
        .await;
    assert!(
        log.contains("BootNotification") && log.contains("Reset from web"),
        "{log}"
    );
    cp.call(
        "StatusNotification",
        json!({"connectorId": 1, "errorCode": "NoError", "status": "SuspendedEVSE"}),
    )
    .await;
    page.wait_text(
        "document.getElementById('log').textContent",
        "SuspendedEVSE",
    )
    .await;

    let shot = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        shot["data"].as_str().unwrap(),
    )
    .unwrap();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-output");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("web-charger-logs.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // Without the token, the page asks for it and shows no data.
    let mut anon = Page::open(&devtools, &format!("http://{api}/#/")).await;
    anon.wait_text("document.body.textContent", "needs its API token")
        .await;

    // The site check, as a printable commissioning record.
    let mut report = Page::open(
        &devtools,
        &format!("http://{api}/?token=web-token-123#/site-check"),
    )
    .await;
    let get_config: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(
        get_config[2], "GetConfiguration",
        "the check reads, changes nothing"
    );
    cp.send(
        &json!([3, get_config[1], {"configurationKey": [
            {"key": "MeterValueSampleInterval", "readonly": false, "value": "0"}]}])
        .to_string(),
    )
    .await;
    let trigger: Value = serde_json::from_str(&cp.recv().await).unwrap();
    assert_eq!(trigger[2], "TriggerMessage");
    cp.send(&json!([3, trigger[1], {"status": "Accepted"}]).to_string())
        .await;
    let text = report
        .wait_text(
            "document.getElementById('site-report') ? document.getElementById('app').textContent : ''",
            "NOT READY",
        )
        .await;
    assert!(text.contains("Gateway"), "{text}");
    assert!(text.contains("CP-WEB"), "{text}");
    assert!(
        text.contains("MeterValueSampleInterval is 0"),
        "the charger's problem, in words: {text}"
    );
    assert!(text.contains(
        "chargegate action change-config CP-WEB --key MeterValueSampleInterval --value 60"
    ));
    let pdf = report
        .call("Page.printToPDF", json!({"printBackground": false}))
        .await;
    let pdf = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        pdf["data"].as_str().unwrap(),
    )
    .unwrap();
    assert!(pdf.starts_with(b"%PDF"), "printable");
    std::fs::write(out.join("site-check.pdf"), &pdf).unwrap();
    let _ = browser.kill().await;
}
