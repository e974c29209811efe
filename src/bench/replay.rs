//! `chargegate bench --replay N`: N transaction messages queued in the
//! outbox (as after a long outage) are replayed by a real daemon to a local
//! sink CSMS; the rate is compared with one client sending the same
//! messages directly, one outstanding CALL at a time. Also times the
//! daemon's start (to READY) with that journal, optionally padded with
//! `--journal-mb` MB of events.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use super::{answer, open, start_gateway};
use crate::api::Status;
use crate::client::ApiClient;
use crate::event::{Event, Link};
use crate::journal::{self, Journal, JournalConfig, Op};
use crate::ocpp::frame;
use crate::outbox::{self, Entry};

const CHARGER: &str = "B-REPLAY";

fn meter_payload(n: usize) -> String {
    format!(
        r#"{{"connectorId":1,"transactionId":777,"meterValue":[{{"timestamp":"2026-01-01T00:00:00Z","sampledValue":[{{"value":"{n}"}}]}}]}}"#
    )
}

/// Fill the outbox (and optionally the journal) before the daemon starts.
async fn prepare(data: &Path, n: usize, journal_mb: usize) -> anyhow::Result<()> {
    let cfg = JournalConfig {
        path: journal::path_in(data),
        max_age: Duration::from_secs(86_400 * 365),
        max_bytes: 1 << 40,
        commit_interval: Duration::ZERO,
    };
    let j = Journal::open(cfg)?;
    let filler = Event::Disconnect {
        link: Link::Cloud,
        reason: "x".repeat(120),
        code: None,
    };
    let per_event = serde_json::to_vec(&filler)?.len() + 40;
    let events = journal_mb * 1024 * 1024 / per_event;
    for chunk in (0..events).collect::<Vec<_>>().chunks(4096) {
        let ops = chunk
            .iter()
            .map(|i| Op::Event {
                charger: Some(format!("CP-{}", i % 500)),
                event: filler.clone(),
            })
            .collect();
        j.commit(ops).await?;
    }
    for chunk in (0..n).collect::<Vec<_>>().chunks(4096) {
        let ops = chunk
            .iter()
            .map(|&i| {
                let entry = Entry {
                    action: "MeterValues".into(),
                    payload: meter_payload(i),
                    queued_ms: 0,
                    attempts: 0,
                    local_tx: None,
                };
                Op::Outbox(outbox::Op::Push {
                    charger: CHARGER.into(),
                    key: j.next_outbox_key(),
                    entry,
                })
            })
            .collect();
        j.commit(ops).await?;
    }
    j.close().await;
    Ok(())
}

/// The baseline: one client sends `n` MeterValues to the sink, one at a time.
async fn direct(sink: SocketAddr, n: usize) -> anyhow::Result<f64> {
    let mut ws = open(&format!("ws://{sink}/ocpp/{CHARGER}")).await?;
    let start = Instant::now();
    for i in 0..n {
        let id = i.to_string();
        ws.send(Message::text(frame::call_raw(
            &id,
            "MeterValues",
            &meter_payload(i),
        )))
        .await?;
        answer(&mut ws, &id).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub(super) async fn run(
    dir: &Path,
    sink: SocketAddr,
    n: usize,
    journal_mb: usize,
) -> anyhow::Result<()> {
    let t = Instant::now();
    prepare(&dir.join("data"), n, journal_mb).await?;
    let size = journal::disk_bytes(&dir.join("data"));
    println!("prepared {n} queued messages and {journal_mb} MB of events in {:.1} s; journal file {:.1} MB", t.elapsed().as_secs_f64(), size as f64 / 1e6);

    let t = Instant::now();
    let (gw, url, api) = start_gateway(&std::env::current_exe()?, dir, "data", sink, None).await?;
    println!(
        "daemon start to accepting chargers: {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let api = ApiClient {
        addr: api,
        token: None,
    };
    let start = Instant::now();
    let _charger = open(&format!("{url}/{CHARGER}")).await?;
    let deadline = start + Duration::from_secs(600);
    loop {
        let s: Status = api.get("/api/v1/status").await?;
        let depth = s
            .chargers
            .iter()
            .find(|c| c.state.id == CHARGER)
            .map_or(n as u64, |c| c.outbox.depth);
        if depth == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replay did not finish: {depth} left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replay_rate = n as f64 / start.elapsed().as_secs_f64();
    drop(gw); // kill_on_drop: SIGKILL, no clean shutdown
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let (gw, _, _) = start_gateway(&std::env::current_exe()?, dir, "data", sink, None).await?;
    println!(
        "daemon start after SIGKILL (crash recovery) to accepting chargers: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    drop(gw);
    let size = journal::disk_bytes(&dir.join("data"));
    println!("journal file after the replay: {:.1} MB", size as f64 / 1e6);
    let direct_rate = direct(sink, n).await.context("direct baseline")?;
    println!(
        "replay of {n} queued messages: {replay_rate:.0} msg/s; sent directly by one client: {direct_rate:.0} msg/s; replay ÷ direct = {:.2}",
        replay_rate / direct_rate
    );
    Ok(())
}
