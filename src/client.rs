//! The CLI's side of the local API: `chargegate status` and `chargegate log`
//! fetch JSON from the running daemon and print it for people.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::api::Status;
use crate::event::Record;

/// Where the daemon's API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl ApiClient {
    /// GET a path and decode its JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> anyhow::Result<T> {
        self.request("GET", path_and_query, None).await
    }

    /// POST a JSON body and decode the JSON answer; the gateway journals
    /// the action with source `cli`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.request("POST", path, Some(body.to_string())).await
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<String>,
    ) -> anyhow::Result<T> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(self.addr))
            .await
            .map_err(|_| anyhow::anyhow!("the daemon's API at {} did not answer", self.addr))?
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the daemon's API at {}: {e} (is chargegate running?)",
                    self.addr
                )
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", self.addr.to_string());
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req = req.header("x-chargegate-source", "cli");
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        let resp = sender.send_request(req.body(body)?).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            anyhow::bail!("API error {status}: {msg}");
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

fn ago(ms: Option<i64>, now: i64) -> String {
    let Some(ms) = ms else { return "never".into() };
    let s = ((now - ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h{}m ago", s / 3600, s % 3600 / 60),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The status table.
pub fn format_status(s: &Status) -> String {
    let now = now_ms();
    let mut out = format!(
        "gateway {} (chargegate {}), cloud: {}, journal: {} records{}\n\n",
        s.gateway,
        s.version,
        s.upstream.as_deref().unwrap_or("none (standalone)"),
        s.journal_records,
        s.journal_alarm
            .as_ref()
            .map(|a| format!(", ALARM: {a}"))
            .unwrap_or_default()
    );
    if s.chargers.is_empty() {
        out.push_str(
            "no chargers yet: point a charger (or `chargegate sim`) at ws://GATEWAY:PORT/ocpp/ID\n",
        );
        return out;
    }
    let rows: Vec<[String; 7]> = s.chargers.iter().map(|c| status_row(s, c, now)).collect();
    let header = [
        "CHARGER",
        "CHARGER LINK",
        "CLOUD LINK",
        "CONNECTORS",
        "TRANSACTION",
        "OUTBOX",
        "LAST EVENT",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (c, w) in cells.iter().zip(widths) {
            let c = crate::text::printable(c);
            l.push_str(&format!("{c:<w$}  "));
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(&header.map(String::from)));
    for r in &rows {
        out.push_str(&line(r));
    }
    out.push_str(&format_smart(s));
    out
}

/// One charger's row of the status table.
fn status_row(s: &Status, c: &crate::api::ChargerView, now: i64) -> [String; 7] {
    let st = &c.state;
    let link = |up: bool, since: Option<i64>| {
        if since.is_none() {
            "-".to_string()
        } else if up {
            format!("up {}", ago(since, now))
        } else {
            format!("down {}", ago(since, now))
        }
    };
    let connectors = st
        .connectors
        .iter()
        .map(|(n, c)| format!("{n}:{}", c.status))
        .collect::<Vec<_>>()
        .join(" ");
    let tx = st
        .transactions
        .values()
        .map(|t| format!("{}@{}", t.name(), t.connector))
        .collect::<Vec<_>>()
        .join(" ");
    [
        st.id.clone(),
        link(c.connected && st.charger_link.up, st.charger_link.since_ms),
        {
            let mut cloud = if s.upstream.is_some() {
                link(st.cloud_link.up, st.cloud_link.since_ms)
            } else {
                "standalone".into()
            };
            // Second backends after the cloud: "; ha up".
            for (name, l) in &st.mirrors {
                cloud.push_str(&format!("; {name} {}", if l.up { "up" } else { "down" }));
            }
            cloud
        },
        if connectors.is_empty() {
            "-".into()
        } else {
            connectors
        },
        if tx.is_empty() { "-".into() } else { tx },
        match (c.outbox.depth, c.outbox.dead_letters) {
            (0, 0) => "-".into(),
            (d, 0) => format!("{d} (oldest {})", ago(c.outbox.oldest_ms, now)),
            (d, x) => format!("{d}, {x} DEAD"),
        },
        ago(st.last_event_ms, now),
    ]
}

/// The smart-charging part of the status: the meter, load management and
/// each managed charger's limit with its reason.
fn format_smart(s: &Status) -> String {
    let sm = &s.smart;
    let mut out = String::new();
    if let Some(m) = &sm.meter {
        out.push_str(&format!("\nsite meter ({}): ", m.model));
        match (&m.last, &m.error) {
            (Some(r), None) => out.push_str(&format!(
                "L1 {:.1} A, L2 {:.1} A, L3 {:.1} A{}{}",
                r.current[0],
                r.current[1],
                r.current[2],
                r.power_w
                    .map(|w| format!(", {:.2} kW", w / 1000.0))
                    .unwrap_or_default(),
                r.energy_import_kwh
                    .map(|e| format!(", {e:.1} kWh imported"))
                    .unwrap_or_default()
            )),
            (_, Some(e)) => out.push_str(&format!("NOT ANSWERING: {e}")),
            (None, None) => out.push_str("no reading yet"),
        }
        out.push('\n');
    }
    match sm.load.as_str() {
        "sharing" => out.push_str(&format!(
            "load management: sharing {:.1} A per phase among the chargers\n",
            sm.available_a.unwrap_or(0.0)
        )),
        "fallback" => {
            out.push_str("load management: FALLBACK, every charger at the safe current\n")
        }
        _ => {}
    }
    let limited: Vec<_> = s
        .chargers
        .iter()
        .filter_map(|c| c.state.limit.as_ref().map(|l| (c, l)))
        .collect();
    if !limited.is_empty() {
        out.push_str("\nLIMITS\n");
        for (c, l) in limited {
            out.push_str(&format!(
                "{}  {} A  {}{}\n",
                c.state.id,
                l.amps,
                l.reason,
                c.state
                    .profile_answer
                    .as_ref()
                    .filter(|a| a.as_str() != "Accepted")
                    .map(|a| format!("  (charger answered the profile: {a})"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// A remote action's result for people.
pub fn format_action(r: &crate::api::ActionResult) -> String {
    let what = match (&r.result, &r.error) {
        (Some(v), _) => match v.get("status").and_then(|s| s.as_str()) {
            Some(s) => s.to_string(),
            None => v.to_string(),
        },
        (None, Some(e)) => format!("{} ({e})", r.outcome),
        (None, None) => r.outcome.clone(),
    };
    format!(
        "{} {}: {} {} → {what}",
        r.action, r.charger, r.call, r.request
    )
}

/// A check report for people.
pub fn format_check(charger: &str, report: &serde_json::Value) -> String {
    let s = &report["state"];
    let link = |l: &serde_json::Value| match (l["up"].as_bool(), l["since_ms"].is_null()) {
        (_, true) => "none",
        (Some(true), _) => "up",
        _ => "down",
    };
    let boot = &s["boot"];
    let mut out = format!(
        "check {charger}: charger link {}, cloud link {}, {} {} firmware {}\n",
        if report["connected"] == true {
            "up"
        } else {
            "down"
        },
        link(&s["cloud_link"]),
        boot["vendor"].as_str().unwrap_or("?"),
        boot["model"].as_str().unwrap_or("?"),
        boot["firmware"].as_str().unwrap_or("?"),
    );
    if let Some(cs) = s["connectors"].as_object() {
        for (n, c) in cs {
            out.push_str(&format!(
                "  connector {n}: {} ({})\n",
                c["status"].as_str().unwrap_or("?"),
                c["error_code"].as_str().unwrap_or("?")
            ));
        }
    }
    for t in report["triggers"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  TriggerMessage {}: {}\n",
            t["message"].as_str().unwrap_or("?"),
            t["answer"].as_str().unwrap_or("?")
        ));
    }
    match report["findings"].as_array() {
        Some(f) if !f.is_empty() => {
            out.push_str("what looks wrong:\n");
            for x in f {
                out.push_str(&format!("  - {}\n", x.as_str().unwrap_or("?")));
            }
        }
        _ => out.push_str("nothing looks wrong\n"),
    }
    out
}

/// One journal record as a log line.
pub fn format_record(r: &Record) -> String {
    let t = crate::clock::format_unix_ms(r.time_ms);
    // What chargers said (vendor, error info, close reasons) is shown,
    // never obeyed by the terminal.
    format!(
        "{t}  {:<12} {:<18} {}",
        crate::text::printable(r.charger.as_deref().unwrap_or("(gateway)")),
        r.event.kind(),
        crate::text::printable(&r.event.summary())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ChargerView;
    use crate::state::ChargerState;

    #[test]
    fn status_table_shows_outbox_and_dead_letters() {
        let view = |id: &str, depth, dead| ChargerView {
            state: ChargerState {
                id: id.into(),
                ..Default::default()
            },
            connected: false,
            known: true,
            outbox: crate::outbox::Stats {
                depth,
                oldest_ms: Some(now_ms() - 120_000),
                dead_letters: dead,
            },
        };
        let s = Status {
            gateway: "g".into(),
            version: "v".into(),
            upstream: Some("ws://cloud".into()),
            journal_records: 1,
            journal_last_seq: 1,
            journal_alarm: None,
            chargers: vec![view("CP-1", 3, 0), view("CP-2", 1, 2)],
            smart: Default::default(),
        };
        let out = format_status(&s);
        let lines: Vec<&str> = out.lines().collect();
        let header = lines.iter().find(|l| l.starts_with("CHARGER")).unwrap();
        assert!(
            header.contains("OUTBOX") && header.ends_with("LAST EVENT"),
            "{out}"
        );
        assert!(out.contains("3 (oldest 2m ago)"), "{out}");
        assert!(out.contains("1, 2 DEAD"), "{out}");
    }
}
