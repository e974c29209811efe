//! `chargegate bench --wear`: what the journal costs the storage. N
//! chargers each start a transaction and send MeterValues every few
//! seconds, as charging cars do, through a real daemon to a local sink
//! CSMS; the daemon's bytes written to storage (`/proc/PID/io`
//! `write_bytes`) are divided by the events it journaled in the window.
//! With `--baseline BIN`, another build runs the same load beside it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{connect_all, next_call, proc_value, start_gateway, start_transactions, Ws};
use crate::client::ApiClient;
use crate::event::Record;

/// The wear run's settings.
pub struct WearArgs {
    pub chargers: usize,
    /// Seconds between one charger's MeterValues.
    pub interval: Duration,
    /// How long the load runs.
    pub window: Duration,
}

/// Bytes this process has caused to be written to storage.
fn write_bytes(pid: u32) -> u64 {
    proc_value(pid, "io", "write_bytes:")
}

/// One gateway under load: its chargers, process and API.
struct Gateway {
    name: String,
    _child: tokio::process::Child,
    pid: u32,
    api: SocketAddr,
    conns: Vec<Ws>,
    txs: Vec<Option<i64>>,
}

impl Gateway {
    async fn start(
        exe: &Path,
        dir: &Path,
        name: &str,
        sink: SocketAddr,
        n: usize,
    ) -> anyhow::Result<Gateway> {
        let (child, url, api) = start_gateway(exe, dir, name, sink, None).await?;
        let pid = child.id().context("gateway pid")?;
        let mut conns = connect_all(&url, &format!("w{name}"), n).await?;
        let txs = start_transactions(&mut conns).await?;
        Ok(Gateway {
            name: name.to_string(),
            _child: child,
            pid,
            api,
            conns,
            txs,
        })
    }

    /// Records journaled since `since_ms` (unix ms).
    async fn events_since(&self, since_ms: i64) -> anyhow::Result<usize> {
        let api = ApiClient {
            addr: self.api,
            token: None,
        };
        let recs: Vec<Record> = api
            .get(&format!("/api/v1/events?since={since_ms}&limit=10000000"))
            .await?;
        Ok(recs.len())
    }
}

/// Run the load on every gateway at once for the window, then print each
/// one's bytes written per journaled event.
pub async fn run(
    exe: &Path,
    baseline: Option<&Path>,
    dir: &Path,
    sink: SocketAddr,
    args: WearArgs,
) -> anyhow::Result<()> {
    let mut gws = vec![Gateway::start(exe, dir, "wear", sink, args.chargers).await?];
    if let Some(b) = baseline {
        gws.push(Gateway::start(b, dir, "wear-baseline", sink, args.chargers).await?);
    }
    // Let the start-up writes settle before measuring: the connects and
    // transaction starts are staged up to the commit interval (5 s), and
    // would be counted in the window's bytes but not in its events.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let since_ms = jiff::Timestamp::now().as_millisecond();
    let before: Vec<u64> = gws.iter().map(|g| write_bytes(g.pid)).collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for g in &mut gws {
        let n = g.conns.len();
        for (i, (mut ws, tx)) in std::mem::take(&mut g.conns)
            .into_iter()
            .zip(g.txs.clone())
            .enumerate()
        {
            let (interval, window) = (args.interval, args.window);
            tasks.push(tokio::spawn(async move {
                // Spread evenly, as independent chargers are.
                let mut at = start + interval.mul_f64(i as f64 / n as f64);
                let mut k = 1;
                while at < start + window {
                    tokio::time::sleep_until(at.into()).await;
                    // Odd k: MeterValues of the charger's transaction.
                    next_call(&mut ws, k, tx).await?;
                    k += 2;
                    at += interval;
                }
                Ok::<_, anyhow::Error>(ws)
            }));
        }
    }
    // The chargers stay connected until the figures are read: their
    // disconnects are not part of the load.
    let mut open = Vec::with_capacity(tasks.len());
    for t in tasks {
        open.push(t.await??);
    }
    // What the window staged is written within the commit interval.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "chargegate bench --wear: {} chargers, MeterValues every {:?} each, {:?} of load",
        args.chargers, args.interval, args.window
    );
    for (g, b) in gws.iter().zip(before) {
        let bytes = write_bytes(g.pid).saturating_sub(b);
        let events = g.events_since(since_ms).await?.max(1);
        let per_day = bytes as f64 / secs * 86_400.0;
        println!(
            "  {:<14} {events} events journaled, {bytes} bytes written: {:.0} B per event; {:.1} MB per charger-day ({:.0} MB a day)",
            g.name,
            bytes as f64 / events as f64,
            per_day / args.chargers as f64 / 1e6,
            per_day / 1e6
        );
    }
    drop(open);
    Ok(())
}
