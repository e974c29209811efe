//! `chargegate bench`: measures the relay against baselines in the same run.
//! N chargers send Heartbeats (one outstanding CALL each, as OCPP-J
//! requires) to a local sink CSMS three ways: directly, through a real
//! `chargegate` child process, and through nginx relaying the same
//! WebSockets (when nginx is installed). Prints round-trip p50/p99, the
//! ratios to direct, messages/s, the relays' RSS, and the journal's durable
//! event rate with group commit against one fsync per event.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
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

mod replay;

/// Benchmark settings.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Charger counts to measure, comma-separated.
    #[arg(long, default_value = "10,100,1000", value_delimiter = ',')]
    pub chargers: Vec<usize>,
    /// Heartbeats per charger per run.
    #[arg(long, default_value_t = 50)]
    pub messages: usize,
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
}

/// Raise the open-files limit to its hard maximum (a gateway with a
/// thousand chargers holds two sockets per charger).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
/// A CSMS that answers every CALL at once; what the relays are measured to.
pub async fn sink() -> std::io::Result<std::net::SocketAddr> {
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
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        if let Ok(Frame::Call { id, .. }) = frame::parse(t.as_str()) {
                            let reply = frame::call_result(
                                &id,
                                &serde_json::json!({"currentTime": "2026-01-01T00:00:00Z"}),
                            );
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
    let id = n.to_string();
    let t0 = Instant::now();
    ws.send(Message::text(frame::call(
        &id,
        "Heartbeat",
        &serde_json::json!({}),
    )))
    .await?;
    tokio::time::timeout(Duration::from_secs(10), answer(ws, &id))
        .await
        .context("no answer within 10 s")??;
    Ok(t0.elapsed())
}

pub(crate) async fn answer(ws: &mut Ws, id: &str) -> anyhow::Result<()> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if let Ok(Frame::CallResult { id: got, .. }) = frame::parse(t.as_str()) {
                    if got == id {
                        return Ok(());
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection closed"),
        }
    }
}

/// Results of one load run.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub p50: Duration,
    pub p99: Duration,
    pub msgs_per_sec: f64,
}

/// Connect `n` chargers to `base`, then send `m` heartbeats from each,
/// all at once; `after_connect` runs while they are all connected.
async fn load(
    base: &str,
    tag: &str,
    n: usize,
    m: usize,
    after_connect: impl FnOnce(),
) -> anyhow::Result<LoadResult> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut ws = open(&format!("{base}/B-{tag}-{i}")).await?;
        call(&mut ws, 0).await?; // warm-up: the relay's upstream link is up
        conns.push(ws);
    }
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut rtts = Vec::with_capacity(m);
                for k in 1..=m {
                    rtts.push(call(&mut ws, k).await?);
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
    let wall = start.elapsed();
    after_connect();
    for mut ws in keep {
        let _ = ws.close(None).await;
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Ok(LoadResult {
        p50: pct(0.50),
        p99: pct(0.99),
        msgs_per_sec: all.len() as f64 / wall.as_secs_f64(),
    })
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn start_gateway(
    dir: &Path,
    sink: std::net::SocketAddr,
    threads: Option<usize>,
) -> anyhow::Result<(Child, String, std::net::SocketAddr)> {
    let cfg = format!(
        "[gateway]\ndata_dir = {:?}\nlog_level = \"warn\"\n[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\nping_interval_secs = 0\nmax_connections = 0\nmax_connections_per_ip = 0\nrate_limit_per_sec = 0\n[api]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"ws://{sink}/ocpp\"\n",
        dir.join("data")
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, cfg)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    if let Some(t) = threads {
        cmd.env("TOKIO_WORKER_THREADS", t.to_string());
    }
    let mut child = cmd
        .arg("--config")
        .arg(&path)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await??
        .context("gateway exited")?;
    let ocpp = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ocpp="))
        .context("no READY line")?
        .to_string();
    let api = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("api="))
        .context("no api address")?
        .parse()?;
    Ok((child, format!("ws://{ocpp}/ocpp"), api))
}

fn start_nginx(
    dir: &Path,
    sink: std::net::SocketAddr,
) -> anyhow::Result<(std::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = format!(
        "worker_processes 1;\nworker_rlimit_nofile 65536;\ndaemon off;\nerror_log stderr error;\npid {dir}/nginx.pid;\nevents {{ worker_connections 8192; }}\nhttp {{\n access_log off;\n client_body_temp_path {dir}/b; proxy_temp_path {dir}/p; fastcgi_temp_path {dir}/f; uwsgi_temp_path {dir}/u; scgi_temp_path {dir}/s;\n server {{\n  listen 127.0.0.1:{port};\n  location / {{\n   proxy_pass http://{sink};\n   proxy_http_version 1.1;\n   proxy_set_header Upgrade $http_upgrade;\n   proxy_set_header Connection \"upgrade\";\n   proxy_read_timeout 3600s;\n  }}\n }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = std::process::Command::new(nginx_binary().context("nginx not found")?)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stderr(Stdio::inherit())
        .spawn()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((child, format!("ws://127.0.0.1:{port}/ocpp")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("nginx did not start")
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// RSS of nginx's master and workers.
fn nginx_rss_kb(master: u32) -> u64 {
    let mut total = rss_kb(master);
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
    {
        total += children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(rss_kb)
            .sum::<u64>();
    }
    total
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Durable journal appends per second: `tasks` concurrent writers.
async fn journal_rate(dir: &Path, events: usize, tasks: usize) -> anyhow::Result<f64> {
    let j = Journal::open(JournalConfig {
        path: dir.join(format!("j{tasks}.redb")),
        max_age: Duration::from_secs(86_400),
        max_bytes: 1 << 30,
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

/// Run the benchmark and print its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    let dir = tempfile_dir()?;
    let sink = sink().await?;
    if args.replay > 0 {
        let r = replay::run(&dir, sink, args.replay, args.journal_mb).await;
        let _ = std::fs::remove_dir_all(&dir);
        return r;
    }
    let (gw, gw_url, _) = start_gateway(&dir, sink, args.gateway_threads).await?;
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
    println!(
        "chargegate bench: {} heartbeats per charger, sink CSMS on {sink}; gateway idle RSS {} KB",
        args.messages, idle_rss
    );
    println!(
        "{:>6} | {:>22} | {:>22} | {:>22} | {:>9} {:>9} | {:>10} {:>10} | {:>12}",
        "N",
        "direct p50/p99",
        "chargegate p50/p99",
        "nginx p50/p99",
        "cg/dir",
        "ngx/dir",
        "cg RSS",
        "ngx RSS",
        "cg msg/s"
    );
    for &n in &args.chargers {
        let direct = load(
            &format!("ws://{sink}/ocpp"),
            &format!("d{n}"),
            n,
            args.messages,
            || {},
        )
        .await?;
        let rss = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r2 = rss.clone();
        let through = load(&gw_url, &format!("g{n}"), n, args.messages, move || {
            r2.store(rss_kb(gw_pid), std::sync::atomic::Ordering::Relaxed)
        })
        .await?;
        let gw_rss = rss.load(std::sync::atomic::Ordering::Relaxed);
        let (ngx, ngx_rss) = match &nginx {
            Some((child, url)) => {
                let r = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let r3 = r.clone();
                let pid = child.id();
                let res = load(url, &format!("n{n}"), n, args.messages, move || {
                    r3.store(nginx_rss_kb(pid), std::sync::atomic::Ordering::Relaxed)
                })
                .await?;
                (Some(res), r.load(std::sync::atomic::Ordering::Relaxed))
            }
            None => (None, 0),
        };
        let ratio = |x: &LoadResult| x.p99.as_secs_f64() / direct.p99.as_secs_f64();
        println!(
            "{n:>6} | {:>22} | {:>22} | {:>22} | {:>8.2}x {:>9} | {:>7} KB {:>10} | {:>12.0}",
            format!("{} / {}", ms(direct.p50), ms(direct.p99)),
            format!("{} / {}", ms(through.p50), ms(through.p99)),
            ngx.as_ref()
                .map_or("-".into(), |x| format!("{} / {}", ms(x.p50), ms(x.p99))),
            ratio(&through),
            ngx.as_ref()
                .map_or("-".into(), |x| format!("{:.2}x", ratio(x))),
            gw_rss,
            if ngx.is_some() {
                format!("{ngx_rss} KB")
            } else {
                "-".into()
            },
            through.msgs_per_sec,
        );
        println!(
            "{:>6}   chargegate RSS per charger above idle: {:.1} KB (target: 25 MB + 64 KB per charger = {} KB at N={n})",
            "",
            (gw_rss.saturating_sub(idle_rss)) as f64 / n as f64,
            25 * 1024 + 64 * n
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if let Some((mut child, _)) = nginx {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(gw);
    let single = journal_rate(&dir, args.journal_events.min(2000), 1).await?;
    let grouped = journal_rate(&dir, args.journal_events, 64).await?;
    println!("journal durable events/s: one fsync per event {single:.0}; group commit with 64 writers {grouped:.0} ({:.1}x)", grouped / single);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("chargegate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
