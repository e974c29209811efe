//! The processes a benchmark measures: the gateway under test, nginx
//! relaying the same WebSockets, their CPU ticks and memory read from
//! /proc, and the three paths (direct, nginx, gateway) a round goes over.

use super::*;

/// One way to the sink (direct, chargegate, nginx) and what was measured
/// through it over all rounds.
pub(super) struct Path3 {
    pub(super) name: &'static str,
    pub(super) conns: Vec<Ws>,
    /// Each connection's transaction id (`transactions` mix).
    pub(super) txs: Vec<Option<i64>>,
    /// The relay's processes, for RSS and CPU time.
    pub(super) pids: Vec<u32>,
    pub(super) samples: Vec<Duration>,
    pub(super) round_p99: Vec<Duration>,
    pub(super) wall: Duration,
    pub(super) cpu_ticks: u64,
    /// CPU ticks over `IDLE_WINDOW` with every connection open and quiet.
    pub(super) idle_ticks: u64,
    pub(super) rss_kb: u64,
}

/// How long the relays are watched with every charger connected and quiet.
pub(super) const IDLE_WINDOW: Duration = Duration::from_secs(3);

impl Path3 {
    /// `n` chargers connected through `base`, with a transaction each in
    /// the `transactions` mix.
    pub(super) async fn open(
        name: &'static str,
        base: &str,
        n: usize,
        mix: Mix,
        pids: Vec<u32>,
    ) -> anyhow::Result<Path3> {
        let mut conns = connect_all(base, &format!("{name}{n}"), n).await?;
        let txs = match mix {
            Mix::Heartbeat => vec![None; n],
            Mix::Transactions => start_transactions(&mut conns).await?,
        };
        Ok(Path3 {
            name,
            conns,
            txs,
            pids,
            samples: Vec::new(),
            round_p99: Vec::new(),
            wall: Duration::ZERO,
            cpu_ticks: 0,
            idle_ticks: 0,
            rss_kb: 0,
        })
    }

    /// Percentile of the pooled samples (sorted once, by `print_row`).
    pub(super) fn p(&self, q: f64) -> Duration {
        pct(&self.samples, q)
    }

    /// The relay's CPU time so far, in clock ticks (0 for direct).
    pub(super) fn cpu_now(&self) -> u64 {
        self.pids.iter().map(|&p| cpu_ticks(p)).sum()
    }
}

/// A number from a line `KEY value …` of `/proc/PID/FILE` (0 if missing).
pub(super) fn proc_value(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

pub(super) fn rss_kb(pid: u32) -> u64 {
    proc_value(pid, "status", "VmRSS:")
}

/// User + system CPU time of a process, in clock ticks (`/proc/PID/stat`).
pub(super) fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which may itself hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// A process and its children (nginx's workers).
pub(super) fn with_children(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        all.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    all
}

pub(super) async fn start_gateway(
    exe: &Path,
    dir: &Path,
    name: &str,
    sink: std::net::SocketAddr,
    threads: Option<usize>,
) -> anyhow::Result<(Child, String, std::net::SocketAddr)> {
    start_gateway_with(exe, dir, name, sink, threads, "").await
}

/// [`start_gateway`] with `extra` config appended.
pub(super) async fn start_gateway_with(
    exe: &Path,
    dir: &Path,
    name: &str,
    sink: std::net::SocketAddr,
    threads: Option<usize>,
    extra: &str,
) -> anyhow::Result<(Child, String, std::net::SocketAddr)> {
    let cfg = format!(
        "[gateway]\ndata_dir = {:?}\nlog_level = \"warn\"\n[ocpp]\nlisten = \"127.0.0.1:0\"\nallow_unknown_chargers = true\nping_interval_secs = 0\nmax_connections = 0\nmax_connections_per_ip = 0\nrate_limit_per_sec = 0\n[api]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"ws://{sink}/ocpp\"\n{extra}",
        dir.join(name)
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg)?;
    let mut cmd = Command::new(exe);
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

pub(super) fn start_nginx(
    dir: &Path,
    sink: std::net::SocketAddr,
) -> anyhow::Result<(std::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\nerror_log stderr error;\npid {dir}/nginx.pid;\nevents {{ worker_connections 8192; }}\nhttp {{\n access_log off;\n client_body_temp_path {dir}/b; proxy_temp_path {dir}/p; fastcgi_temp_path {dir}/f; uwsgi_temp_path {dir}/u; scgi_temp_path {dir}/s;\n server {{\n  listen 127.0.0.1:{port};\n  location / {{\n   proxy_pass http://{sink};\n   proxy_http_version 1.1;\n   proxy_set_header Upgrade $http_upgrade;\n   proxy_set_header Connection \"upgrade\";\n   proxy_read_timeout 3600s;\n  }}\n }}\n}}\n",
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

pub(super) fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

pub(super) fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("chargegate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
