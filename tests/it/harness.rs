//! Test harness: the real daemon on port 0 (in-process or as a child
//! process), a raw test charger, and a fake CSMS that records every frame.
//! All sockets are real; nothing listens on a fixed port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chargegate::config::Config;
use chargegate::daemon::{self, Running};
use chargegate::event::Record;
use chargegate::journal::Query;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

pub const WAIT: Duration = Duration::from_secs(10);

/// Config text for a test daemon: loopback, port 0, fast timeouts.
pub fn config_text(data_dir: &Path, upstream: Option<&str>, extra: &str) -> String {
    let mut s = format!(
        "[gateway]\ndata_dir = {:?}\nlog_level = \"warn\"\n[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\ncall_timeout_secs = 3\n[api]\nlisten = \"127.0.0.1:0\"\n",
        data_dir
    );
    if let Some(u) = upstream {
        s.push_str(&format!("[upstream]\nurl = \"{u}\"\nconnect_timeout_secs = 2\nbackoff_min_secs = 0\nbackoff_max_secs = 1\n"));
    }
    // An [api] or [ocpp] section in `extra` merges into the one above.
    let mut extra = extra.to_string();
    for table in ["[api]\n", "[ocpp]\n"] {
        if let Some(at) = extra.find(table) {
            let body_start = at + table.len();
            let body_end = extra[body_start..]
                .find("\n[")
                .map_or(extra.len(), |i| body_start + i + 1);
            let body = extra[body_start..body_end].to_string();
            extra.replace_range(at..body_end, "");
            s = s.replace(table, &format!("{table}{body}"));
        }
    }
    s.push_str(&extra);
    s
}

/// The daemon, in this process.
pub struct Gateway {
    pub running: Option<Running>,
    pub ocpp: SocketAddr,
    /// Kept so the data directory lives as long as the daemon.
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(upstream: Option<&str>, extra: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, upstream, extra).await
    }

    pub async fn start_in(dir: tempfile::TempDir, upstream: Option<&str>, extra: &str) -> Gateway {
        let text = config_text(&dir.path().join("data"), upstream, extra);
        let cfg = Config::parse(&text, "test.toml").expect("test config is valid");
        let running = daemon::start(cfg).await.expect("daemon starts");
        Gateway {
            ocpp: running.ocpp_addr,
            running: Some(running),
            _dir: dir,
        }
    }

    pub fn url(&self, id: &str) -> String {
        format!("ws://{}/ocpp/{id}", self.ocpp)
    }

    pub fn journal(&self) -> &chargegate::journal::Journal {
        &self.running.as_ref().unwrap().journal
    }

    pub fn events(&self, charger: &str) -> Vec<Record> {
        self.journal()
            .query(&Query {
                charger: Some(charger.into()),
                ..Default::default()
            })
            .unwrap()
    }

    /// Wait until the journal holds at least `n` events of `kind` for
    /// `charger`; returns how many it holds.
    pub async fn wait_count(&self, charger: &str, kind: &str, n: usize) -> usize {
        let count = || {
            self.events(charger)
                .iter()
                .filter(|r| r.event.kind() == kind)
                .count()
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while count() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        count()
    }

    /// Wait until the journal holds an event of `kind` for `charger` that
    /// satisfies `pred`.
    pub async fn wait_event(
        &self,
        charger: &str,
        kind: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut rx = self.journal().subscribe();
        let find = |evs: Vec<Record>| {
            evs.into_iter()
                .map(|r| serde_json::to_value(&r).unwrap())
                .find(|v| v["kind"] == kind && pred(v))
        };
        if let Some(v) = find(self.events(charger)) {
            return v;
        }
        tokio::time::timeout(WAIT, async {
            loop {
                match rx.recv().await {
                    Ok(r) if r.charger.as_deref() == Some(charger) => {
                        if let Some(v) = find(vec![(*r).clone()]) {
                            return v;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(v) = find(self.events(charger)) {
                            return v;
                        }
                    }
                    Err(e) => panic!("journal stream ended: {e}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no {kind} event for {charger}; journal: {:#?}",
                self.events(charger)
            )
        })
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw OCPP-J charger: sends exactly the text it is given.
pub struct Charger {
    pub ws: Ws,
    pub next: u64,
    /// The subprotocol the gateway gave this connection.
    pub protocol: Option<String>,
}

/// Why a handshake failed: the HTTP status.
pub async fn connect_status(
    url: &str,
    proto: Option<&str>,
    auth: Option<&str>,
) -> Result<Charger, u16> {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = proto {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    if let Some(a) = auth {
        req.headers_mut()
            .insert("Authorization", HeaderValue::from_str(a).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => Ok(Charger {
            ws,
            next: 0,
            protocol: resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

impl Charger {
    pub async fn connect(url: &str) -> Charger {
        connect_status(url, Some("ocpp1.6"), None)
            .await
            .unwrap_or_else(|s| panic!("refused with HTTP {s}"))
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).await.unwrap();
    }

    /// Next text frame.
    pub async fn recv(&mut self) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return t.to_string(),
                    Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
                    Some(Ok(_)) => {}
                    other => panic!("connection ended: {other:?}"),
                }
            }
        })
        .await
        .expect("a frame within the timeout")
    }

    /// Wait for the connection to be closed; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    _ => return None,
                }
            }
        })
        .await
        .expect("closed within the timeout")
    }

    /// Send a CALL and return the parsed answer frame.
    pub async fn call(&mut self, action: &str, payload: Value) -> Value {
        self.next += 1;
        let id = format!("c{}", self.next);
        self.send(&json!([2, id, action, payload]).to_string())
            .await;
        let v: Value = serde_json::from_str(&self.recv().await).unwrap();
        assert_eq!(v[1], id, "answer to the call just sent: {v}");
        v
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
        // Read until the close handshake completes.
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }
}

pub fn boot() -> Value {
    json!({"chargePointVendor": "TestVendor", "chargePointModel": "TM-1", "firmwareVersion": "1.2.3"})
}

/// The fake CSMS's open connections: charger id → outgoing frames.
type Conns = Arc<Mutex<Vec<(String, mpsc::UnboundedSender<Message>)>>>;

/// What the fake CSMS saw.
#[derive(Debug, Clone)]
pub enum CsmsEvent {
    Connected {
        id: String,
        protocol: Option<String>,
        auth: Option<String>,
    },
    Frame {
        id: String,
        text: String,
    },
    Closed {
        id: String,
    },
    /// A close frame from the gateway (its own close, or its answer to ours).
    CloseFrame {
        id: String,
        code: Option<u16>,
    },
}

/// How the fake CSMS answers a CALL: `None` = no answer;
/// `{"__callerror": CODE}` = a CALLERROR.
pub type Answerer = Arc<dyn Fn(&str, &Value) -> Option<Value> + Send + Sync>;

pub fn default_answers() -> Answerer {
    Arc::new(|action, _| {
        Some(match action {
            "BootNotification" => {
                json!({"status": "Accepted", "currentTime": "2026-01-01T00:00:00Z", "interval": 300})
            }
            "Heartbeat" => json!({"currentTime": "2026-01-01T00:00:00Z"}),
            "Authorize" => json!({"idTagInfo": {"status": "Accepted"}}),
            "StartTransaction" => {
                json!({"transactionId": 4242, "idTagInfo": {"status": "Accepted"}})
            }
            "StopTransaction" => json!({"idTagInfo": {"status": "Accepted"}}),
            _ => json!({}),
        })
    })
}

/// A CSMS on a real socket that records everything and answers CALLs.
pub struct Csms {
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<CsmsEvent>,
    conns: Conns,
    task: tokio::task::JoinHandle<()>,
}

impl Csms {
    pub async fn start(answer: Answerer) -> Csms {
        Self::start_on("127.0.0.1:0", answer).await
    }

    pub async fn start_on(addr: &str, answer: Answerer) -> Csms {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let conns: Conns = Arc::default();
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_csms_conn(
                    stream,
                    tx.clone(),
                    answer.clone(),
                    conns2.clone(),
                ));
            }
        });
        Csms {
            addr,
            events,
            conns,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ocpp", self.addr)
    }

    /// Next event, skipping none.
    pub async fn next(&mut self) -> CsmsEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("a CSMS event in time")
            .expect("CSMS running")
    }

    /// Next frame text received from charger `id`.
    pub async fn next_frame(&mut self, id: &str) -> String {
        loop {
            if let CsmsEvent::Frame { id: got, text } = self.next().await {
                if got == id {
                    return text;
                }
            }
        }
    }

    pub async fn next_connect(&mut self) -> (String, Option<String>, Option<String>) {
        loop {
            if let CsmsEvent::Connected { id, protocol, auth } = self.next().await {
                return (id, protocol, auth);
            }
        }
    }

    pub async fn next_close(&mut self, id: &str) {
        loop {
            if let CsmsEvent::Closed { id: got } = self.next().await {
                if got == id {
                    return;
                }
            }
        }
    }

    /// Send a message on the (latest) connection of charger `id`.
    fn to(&self, id: &str, msg: Message) {
        let conns = self.conns.lock().unwrap();
        let (_, tx) = conns
            .iter()
            .rev()
            .find(|(i, _)| i == id)
            .expect("charger connected to CSMS");
        tx.send(msg).unwrap();
    }

    /// Send raw text to the (latest) connection of charger `id`.
    pub fn send(&self, id: &str, text: &str) {
        self.to(id, Message::text(text.to_string()));
    }

    /// Close the (latest) connection of charger `id` with 1000.
    pub fn close(&self, id: &str) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        self.to(id, Message::Close(Some(frame)));
    }

    /// The close frame the gateway sent on charger `id`'s connection.
    pub async fn next_close_frame(&mut self, id: &str) -> Option<u16> {
        loop {
            if let CsmsEvent::CloseFrame { id: got, code } = self.next().await {
                if got == id {
                    return code;
                }
            }
        }
    }

    /// Drop every connection abruptly and stop listening.
    pub fn kill(self) {
        self.task.abort();
        for (_, tx) in self.conns.lock().unwrap().drain(..) {
            let _ = tx.send(Message::Close(Some(CloseFrame {
                code: CloseCode::Error,
                reason: "csms going down".into(),
            })));
        }
    }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn serve_csms_conn(
    stream: tokio::net::TcpStream,
    tx: mpsc::UnboundedSender<CsmsEvent>,
    answer: Answerer,
    conns: Conns,
) {
    let mut info = None;
    let cb = |req: &Request, mut resp: Response| {
        let id = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let id = percent_encoding::percent_decode_str(&id)
            .decode_utf8_lossy()
            .into_owned();
        let proto = req
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(',').next().unwrap().trim().to_string());
        let auth = req
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(p) = &proto {
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
        }
        info = Some((id, proto, auth));
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
        return;
    };
    let (id, protocol, auth) = info.unwrap();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    conns.lock().unwrap().push((id.clone(), out_tx.clone()));
    let _ = tx.send(CsmsEvent::Connected {
        id: id.clone(),
        protocol,
        auth,
    });
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Close(f) = &msg {
            let _ = tx.send(CsmsEvent::CloseFrame {
                id: id.clone(),
                code: f.as_ref().map(|f| u16::from(f.code)),
            });
        }
        if let Message::Text(t) = msg {
            let text = t.to_string();
            let _ = tx.send(CsmsEvent::Frame {
                id: id.clone(),
                text: text.clone(),
            });
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if v[0] == 2 {
                    if let Some(ans) = answer(v[2].as_str().unwrap_or(""), &v[3]) {
                        let reply = match ans.get("__callerror") {
                            Some(code) => json!([4, v[1], code, "refused by the test CSMS", {}]),
                            None => json!([3, v[1], ans]),
                        };
                        let _ = out_tx.send(Message::text(reply.to_string()));
                    }
                }
            }
        }
    }
    writer.abort();
    let _ = tx.send(CsmsEvent::Closed { id });
}

/// A loopback address where nothing listens (yet).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The daemon as a child process (for kill -9 tests).
pub struct Process {
    pub child: tokio::process::Child,
    pub ocpp: SocketAddr,
    pub api: SocketAddr,
}

impl Process {
    pub async fn spawn(config: &Path) -> Process {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chargegate"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let line = tokio::time::timeout(WAIT, BufReader::new(out).lines().next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("READY line");
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap()
                .parse()
                .unwrap()
        };
        Process {
            ocpp: get("ocpp="),
            api: get("api="),
            child,
        }
    }

    pub async fn kill9(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let _ = self.child.wait().await;
    }
}

/// Run the CLI binary and return (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chargegate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("chargegate.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// `n` simulated chargers (`SIM-1`…) that start one long session each
/// right away and follow their charging profiles on `clock`.
pub fn sim_charging(
    ocpp: SocketAddr,
    n: usize,
    clock: chargegate::clock::Clock,
    stats: std::sync::Arc<chargegate::sim::SimStats>,
) -> tokio::task::JoinHandle<()> {
    let opts = chargegate::sim::SimOptions {
        clock,
        url: format!("ws://{ocpp}/ocpp"),
        chargers: n,
        prefix: "SIM-".into(),
        password: None,
        id_tag: "SIMTAG".into(),
        heartbeat: Duration::from_secs(60),
        meter_interval: Duration::from_millis(300),
        meter_values_per_session: 1_000_000,
        idle: Duration::from_millis(100),
        duration: Some(Duration::from_secs(120)),
        config: Vec::new(),
        clock_offset_s: 0,
        silent: false,
        ocpp: chargegate::ocpp::Protocol::Ocpp16,
    };
    tokio::spawn(async move {
        chargegate::sim::run_with(opts, stats).await;
    })
}

/// A POST written by hand, so a test controls every header (`headers`:
/// complete lines, each ending in CRLF). `Host` is `addr`. Returns the
/// status code (0 if none) and the whole response.
pub async fn raw_post(addr: SocketAddr, path: &str, headers: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}
