//! `chargegate bench`: measures the relay against baselines in the same run.
//! N chargers send Heartbeats (one outstanding CALL each, as OCPP-J
//! requires) to a local sink CSMS three ways: directly, through a real
//! `chargegate` child process, and through nginx relaying the same
//! WebSockets (when nginx is installed), either back to back (a flood) or
//! paced at a given total rate. Prints round-trip p50/p99, the
//! ratios to direct, messages/s, the relays' RSS, and the journal's durable
//! event rate with group commit against one fsync per event.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::event::{Event, Link};
use crate::journal::{Journal, JournalConfig};
use crate::ocpp::frame::{self, Frame};

mod procs;
mod replay;
mod report;
mod wear;
use procs::*;
use report::*;

/// Benchmark settings.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Charger counts to measure, comma-separated.
    #[arg(long, default_value = "10,100,1000", value_delimiter = ',')]
    pub chargers: Vec<usize>,
    /// Heartbeats per charger per round.
    #[arg(long, default_value_t = 50)]
    pub messages: usize,
    /// Rounds per charger count. Direct, chargegate and nginx take turns
    /// within each round, so machine noise falls on all three alike.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Durable journal appends for the journal rate figures.
    #[arg(long, default_value_t = 5000)]
    pub journal_events: usize,
    /// Worker threads of the gateway under test (default: tokio's, one per core).
    #[arg(long)]
    pub gateway_threads: Option<usize>,
    /// Instead of the relay figures: replay this many queued messages and
    /// time it against sending them directly (0 = skip).
    #[arg(long, default_value_t = 0)]
    pub replay: usize,
    /// With --replay: fill the journal with this many MB of events first,
    /// to time the daemon's start with a big journal.
    #[arg(long, default_value_t = 0)]
    pub journal_mb: usize,
    /// Skip the nginx baseline even if nginx is installed.
    #[arg(long)]
    pub no_nginx: bool,
    /// Paced load: all chargers together send this many heartbeats per
    /// second, each on its own schedule, spread evenly (0 = flood: each
    /// charger sends its next heartbeat as soon as the last is answered,
    /// which saturates the machine and measures throughput as much as
    /// latency). A charger whose answer comes late sends its next at once.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// What the chargers send: `heartbeat` (the cheapest message), or
    /// `transactions` (each charger starts a transaction, then alternates
    /// Heartbeat and MeterValues of that transaction: what sites send).
    #[arg(long, value_enum, default_value = "heartbeat")]
    pub mix: Mix,
    /// Another chargegate binary (the previous build, say), measured in the
    /// same rounds as a fourth path.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Instead of the relay figures: bytes written to storage per journaled
    /// event, with chargers sending MeterValues of a running transaction.
    #[arg(long)]
    pub wear: bool,
    /// With --wear: chargers.
    #[arg(long, default_value_t = 50)]
    pub wear_chargers: usize,
    /// With --wear: seconds between one charger's MeterValues.
    #[arg(long, default_value_t = 10.0)]
    pub wear_interval_secs: f64,
    /// With --wear: seconds of load.
    #[arg(long, default_value_t = 60.0)]
    pub wear_secs: f64,
    /// Also measure a gateway with a `[[mirror]]` whose CSMS answers each
    /// call only after this many milliseconds (a slow second backend), as
    /// the path `cg+mirror`: the primary's latency should not change.
    #[arg(long)]
    pub mirror_delay_ms: Option<u64>,
}

/// The message mix the bench sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    Heartbeat,
    Transactions,
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
/// A CSMS that answers every CALL at once; what the relays are measured to.
pub async fn sink() -> std::io::Result<std::net::SocketAddr> {
    sink_answering_after(Duration::ZERO).await
}

/// A sink that answers each call only after `delay` (a slow CSMS).
#[allow(clippy::result_large_err)] // tungstenite's callback signature
pub async fn sink_answering_after(delay: Duration) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let cb = |_: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          mut resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("ocpp1.6"));
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                let mut next_tx = 0;
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        if let Ok(Frame::Call { id, action, .. }) = frame::parse(t.as_str()) {
                            let payload = match action.as_str() {
                                "StartTransaction" => {
                                    next_tx += 1;
                                    serde_json::json!({"transactionId": next_tx, "idTagInfo": {"status": "Accepted"}})
                                }
                                "MeterValues" | "StopTransaction" => serde_json::json!({}),
                                _ => serde_json::json!({"currentTime": "2026-01-01T00:00:00Z"}),
                            };
                            let reply = frame::call_result(&id, &payload);
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            if ws.send(Message::text(reply)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn open(url: &str) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("ocpp1.6"),
    );
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .with_context(|| format!("connect {url}: timed out"))?
    .with_context(|| format!("connect {url}"))?;
    Ok(ws)
}

async fn call(ws: &mut Ws, n: usize) -> anyhow::Result<Duration> {
    call_with(ws, n, "Heartbeat", &serde_json::json!({}))
        .await
        .map(|(d, _)| d)
}

/// One CALL and its answer: the round trip and the answer's payload.
async fn call_with(
    ws: &mut Ws,
    n: usize,
    action: &str,
    payload: &serde_json::Value,
) -> anyhow::Result<(Duration, String)> {
    let id = n.to_string();
    let t0 = Instant::now();
    ws.send(Message::text(frame::call(&id, action, payload)))
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(10), answer_payload(ws, &id))
        .await
        .context("no answer within 10 s")??;
    Ok((t0.elapsed(), got))
}

/// The next message of the charger's in its mix: in `transactions`, every
/// other one is a MeterValues of its transaction `tx`.
async fn next_call(ws: &mut Ws, k: usize, tx: Option<i64>) -> anyhow::Result<Duration> {
    let Some(tx) = tx.filter(|_| k % 2 == 1) else {
        return call(ws, k).await;
    };
    let meter = serde_json::json!({
        "connectorId": 1,
        "transactionId": tx,
        "meterValue": [{
            "timestamp": crate::clock::now_rfc3339(),
            "sampledValue": [
                {"value": format!("{}", 1000 + k), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": "7360", "measurand": "Power.Active.Import", "unit": "W"},
                {"value": "32.0", "measurand": "Current.Import", "unit": "A", "phase": "L1"}
            ]
        }]
    });
    call_with(ws, k, "MeterValues", &meter)
        .await
        .map(|(d, _)| d)
}

/// Start a transaction on each charger; their transaction ids.
async fn start_transactions(conns: &mut [Ws]) -> anyhow::Result<Vec<Option<i64>>> {
    let mut ids = Vec::with_capacity(conns.len());
    for ws in conns.iter_mut() {
        let start = serde_json::json!({"connectorId": 1, "idTag": "BENCH", "meterStart": 1000, "timestamp": crate::clock::now_rfc3339()});
        let (_, answer) = call_with(ws, 0, "StartTransaction", &start).await?;
        let v: serde_json::Value = serde_json::from_str(&answer)?;
        ids.push(Some(
            v["transactionId"]
                .as_i64()
                .context("StartTransaction answered without a transactionId")?,
        ));
    }
    Ok(ids)
}

pub(crate) async fn answer(ws: &mut Ws, id: &str) -> anyhow::Result<()> {
    answer_payload(ws, id).await.map(|_| ())
}

/// Wait for the CALLRESULT with `id`; its payload.
async fn answer_payload(ws: &mut Ws, id: &str) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if let Ok(Frame::CallResult { id: got, payload }) = frame::parse(t.as_str()) {
                    if got == id {
                        return Ok(payload.get().to_string());
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection closed"),
        }
    }
}

/// `n` chargers connected to `base`, each having had one answer (so a
/// relay's upstream link is up before anything is timed).
async fn connect_all(base: &str, tag: &str, n: usize) -> anyhow::Result<Vec<Ws>> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut ws = open(&format!("{base}/B-{tag}-{i}")).await?;
        call(&mut ws, 0).await?;
        conns.push(ws);
    }
    Ok(conns)
}

/// One round: every charger sends `m` heartbeats, each waiting for its
/// answer: back to back, or paced at `rate` per second for all chargers
/// together. Returns the connections, the round trips and the wall time.
async fn round(
    conns: Vec<Ws>,
    txs: &[Option<i64>],
    m: usize,
    first_id: usize,
    rate: f64,
) -> anyhow::Result<(Vec<Ws>, Vec<Duration>, Duration)> {
    let n = conns.len();
    let start = Instant::now();
    // Paced: charger i sends at start + (i/n + k) × period.
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(n as f64 / rate));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let tx = txs.get(i).copied().flatten();
            tokio::spawn(async move {
                let mut rtts = Vec::with_capacity(m);
                for (j, k) in (first_id..first_id + m).enumerate() {
                    if let Some(p) = period {
                        let at = start + p.mul_f64(i as f64 / n as f64 + j as f64);
                        tokio::time::sleep_until(at.into()).await;
                    }
                    rtts.push(next_call(&mut ws, k, tx).await?);
                }
                Ok::<_, anyhow::Error>((rtts, ws))
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n * m);
    let mut keep = Vec::with_capacity(n);
    for t in tasks {
        let (rtts, ws) = t.await??;
        all.extend(rtts);
        keep.push(ws);
    }
    Ok((keep, all, start.elapsed()))
}

/// Percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Linux reports process CPU time in USER_HZ ticks, 100 per second on
/// every architecture the gateway runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// Durable journal appends per second: `tasks` concurrent writers.
async fn journal_rate(dir: &Path, events: usize, tasks: usize) -> anyhow::Result<f64> {
    let j = Journal::open(JournalConfig {
        path: dir.join(format!("j{tasks}.redb")),
        max_age: Duration::from_secs(86_400),
        max_bytes: 1 << 30,
        commit_interval: Duration::ZERO,
    })?;
    let start = Instant::now();
    let per = events / tasks;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let j = j.clone();
            tokio::spawn(async move {
                let id = format!("CP-{t}");
                for _ in 0..per {
                    j.record_durable(
                        Some(&id),
                        Event::Connect {
                            link: Link::Charger,
                            remote: None,
                            protocol: None,
                        },
                    )
                    .await?;
                }
                Ok::<_, crate::journal::JournalError>(())
            })
        })
        .collect();
    for h in handles {
        h.await??;
    }
    let rate = (per * tasks) as f64 / start.elapsed().as_secs_f64();
    j.close().await;
    Ok(rate)
}

/// `--wear`: bytes written per event, against the baseline binary.
async fn run_wear(args: &BenchArgs, dir: &Path, sink: std::net::SocketAddr) -> anyhow::Result<()> {
    let secs = |s: f64, what: &str| {
        Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("--{what}: expected seconds above 0 (got {s})"))
    };
    let w = wear::WearArgs {
        chargers: args.wear_chargers.max(1),
        interval: secs(args.wear_interval_secs, "wear-interval-secs")?,
        window: secs(args.wear_secs, "wear-secs")?,
    };
    let exe = std::env::current_exe()?;
    wear::run(&exe, args.baseline.as_deref(), dir, sink, w).await
}

/// The rounds over every path, taking turns, then what the connected
/// chargers cost when quiet; the connections are closed after.
async fn measure(paths: &mut [Path3], args: &BenchArgs) -> anyhow::Result<()> {
    let m = args.messages;
    for r in 0..args.rounds.max(1) {
        // The paths take turns going first, so none always runs on a
        // machine still busy with another's load.
        for k in 0..paths.len() {
            let i = (r + k) % paths.len();
            let path = &mut paths[i];
            let cpu0 = path.cpu_now();
            let conns = std::mem::take(&mut path.conns);
            let (conns, mut rtts, wall) = round(conns, &path.txs, m, 1 + r * m, args.rate).await?;
            path.cpu_ticks += path.cpu_now().saturating_sub(cpu0);
            path.rss_kb = path.rss_kb.max(path.pids.iter().map(|&p| rss_kb(p)).sum());
            path.wall += wall;
            rtts.sort_unstable();
            path.round_p99.push(pct(&rtts, 0.99));
            path.samples.extend(rtts);
            path.conns = conns;
        }
    }
    // What N connected, quiet chargers cost: timers and keepalive only.
    let before: Vec<u64> = paths.iter().map(Path3::cpu_now).collect();
    tokio::time::sleep(IDLE_WINDOW).await;
    for (path, b) in paths.iter_mut().zip(before) {
        path.idle_ticks = path.cpu_now().saturating_sub(b);
    }
    for path in paths.iter_mut() {
        for mut ws in std::mem::take(&mut path.conns) {
            let _ = ws.close(None).await;
        }
    }
    Ok(())
}

/// A gateway the same run compares against: the previous binary
/// (`--baseline`), and one with a slow mirror (`--mirror-delay-ms`).
type Other = Option<(tokio::process::Child, String)>;

/// Start the other gateways the arguments ask for.
async fn start_others(
    args: &BenchArgs,
    exe: &Path,
    dir: &Path,
    sink: std::net::SocketAddr,
) -> anyhow::Result<(Other, Other)> {
    let baseline = match &args.baseline {
        Some(bin) => {
            let (child, url, _) =
                start_gateway(bin, dir, "baseline", sink, args.gateway_threads).await?;
            Some((child, url))
        }
        None => None,
    };
    let mirrored = match args.mirror_delay_ms {
        Some(ms) => {
            let slow = sink_answering_after(Duration::from_millis(ms)).await?;
            let extra = format!("[[mirror]]\nname = \"slow\"\nurl = \"ws://{slow}/ocpp\"\n");
            let (child, url, _) =
                start_gateway_with(exe, dir, "mirrored", sink, args.gateway_threads, &extra)
                    .await?;
            println!(
                "cg+mirror: a gateway with a [[mirror]] whose CSMS answers each call after {ms} ms"
            );
            Some((child, url))
        }
        None => None,
    };
    Ok((baseline, mirrored))
}

/// Run the benchmark and print its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        anyhow::bail!(
            "--rate: expected heartbeats per second, 0 or more (got {})",
            args.rate
        );
    }
    crate::daemon::raise_fd_limit();
    let dir = tempfile_dir()?;
    let sink = sink().await?;
    if args.replay > 0 {
        let r = replay::run(&dir, sink, args.replay, args.journal_mb).await;
        let _ = std::fs::remove_dir_all(&dir);
        return r;
    }
    if args.wear {
        let r = run_wear(&args, &dir, sink).await;
        let _ = std::fs::remove_dir_all(&dir);
        return r;
    }
    let exe = std::env::current_exe()?;
    let (gw, gw_url, _) = start_gateway(&exe, &dir, "data", sink, args.gateway_threads).await?;
    let (baseline, mirrored) = start_others(&args, &exe, &dir, sink).await?;
    let gw_pid = gw.id().context("gateway pid")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kb(gw_pid);
    let nginx = if args.no_nginx || nginx_binary().is_none() {
        println!(
            "nginx baseline: skipped ({})",
            if args.no_nginx {
                "--no-nginx"
            } else {
                "nginx not installed"
            }
        );
        None
    } else {
        Some(start_nginx(&dir, sink)?)
    };
    print_header(&args, sink, idle_rss);
    for &n in &args.chargers {
        let mix = args.mix;
        let mut paths = vec![
            Path3::open("direct", &format!("ws://{sink}/ocpp"), n, mix, vec![]).await?,
            Path3::open("chargegate", &gw_url, n, mix, vec![gw_pid]).await?,
        ];
        if let Some((child, url)) = &nginx {
            let pids = with_children(child.id());
            paths.push(Path3::open("nginx", url, n, mix, pids).await?);
        }
        if let Some((child, url)) = &baseline {
            let pids = vec![child.id().context("baseline pid")?];
            paths.push(Path3::open("baseline", url, n, mix, pids).await?);
        }
        if let Some((child, url)) = &mirrored {
            let pids = vec![child.id().context("mirrored gateway pid")?];
            paths.push(Path3::open("cg+mirror", url, n, mix, pids).await?);
        }
        let m = args.messages;
        measure(&mut paths, &args).await?;
        print_row(n, m * args.rounds.max(1), idle_rss, &mut paths);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if let Some((mut child, _)) = nginx {
        // SIGTERM, not SIGKILL: the master stops its workers, which would
        // otherwise live on holding our stderr open.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = child.wait();
    }
    drop(gw);
    let single = journal_rate(&dir, args.journal_events.min(2000), 1).await?;
    let grouped = journal_rate(&dir, args.journal_events, 64).await?;
    println!("journal durable events/s: one fsync per event {single:.0}; group commit with 64 writers {grouped:.0} ({:.1}x)", grouped / single);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
