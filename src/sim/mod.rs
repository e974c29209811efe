//! `chargegate sim`: N simulated OCPP 1.6 (or 2.0.1, `v201`) chargers, for installers trying a
//! site without hardware and for tests and benchmarks. Each one boots,
//! heartbeats, reports status, runs charging sessions with meter values,
//! and answers the cloud's calls as a real charger would (Reset reboots it,
//! RemoteStart/Stop start and stop a transaction, TriggerMessage sends the
//! message). They keep the charging profiles they are given and follow
//! them as a charger does: below 6 A a session is suspended
//! (SuspendedEVSE) and resumes when the limit allows again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::clock::now_rfc3339;
use crate::ocpp::frame::{self, Frame};
use crate::ocpp::Protocol;
use crate::upstream::basic_auth;

mod answer;
mod v201;

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Base URL; `/{prefix}{n}` is appended.
    pub url: String,
    pub chargers: usize,
    pub prefix: String,
    pub password: Option<String>,
    pub id_tag: String,
    pub heartbeat: Duration,
    pub meter_interval: Duration,
    pub meter_values_per_session: u32,
    /// Time between sessions (and before the first).
    pub idle: Duration,
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// The clock charging profiles are evaluated on (tests move it).
    pub clock: crate::clock::Clock,
    /// Configuration keys changed from the simulator's defaults
    /// (`GetConfiguration` answers with them; `MeterValuesSampledData`
    /// decides which measurands its meter values carry).
    pub config: Vec<(String, String)>,
    /// How far the simulated chargers' clocks are ahead (negative: behind).
    pub clock_offset_s: i64,
    /// Answer no call from the gateway (a charger that hangs).
    pub silent: bool,
    /// The OCPP version the chargers speak.
    pub ocpp: Protocol,
}

impl SimOptions {
    /// Default settings for `n` chargers at `url` (tests and the CLI start
    /// from these).
    pub fn new(url: impl Into<String>, n: usize) -> SimOptions {
        SimOptions {
            url: url.into(),
            chargers: n,
            prefix: "SIM-".into(),
            password: None,
            id_tag: "SIMTAG".into(),
            heartbeat: Duration::from_secs(60),
            meter_interval: Duration::from_secs(10),
            meter_values_per_session: 6,
            idle: Duration::from_secs(5),
            duration: None,
            clock: Default::default(),
            config: Vec::new(),
            clock_offset_s: 0,
            silent: false,
            ocpp: Protocol::Ocpp16,
        }
    }

    /// The simulated charger's configuration: its defaults, a real
    /// smart-charging AC charger's, with `config` applied.
    pub fn configuration(&self) -> Vec<(String, String)> {
        let mut keys: Vec<(String, String)> = [
            ("HeartbeatInterval", self.heartbeat.as_secs().to_string()),
            (
                "MeterValueSampleInterval",
                self.meter_interval.as_secs().to_string(),
            ),
            (
                "MeterValuesSampledData",
                "Energy.Active.Import.Register,Power.Active.Import,Current.Import".into(),
            ),
            (
                "SupportedFeatureProfiles",
                "Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger,SmartCharging"
                    .into(),
            ),
            ("ChargeProfileMaxStackLevel", "10".into()),
            (
                "ChargingScheduleAllowedChargingRateUnit",
                "Current,Power".into(),
            ),
            ("LocalAuthListEnabled", "true".into()),
            ("AuthorizeRemoteTxRequests", "false".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in &self.config {
            match keys.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.clone(),
                None => keys.push((k.clone(), v.clone())),
            }
        }
        keys
    }
}

/// Counters across all simulated chargers.
#[derive(Debug, Default)]
pub struct SimStats {
    pub connects: AtomicU64,
    pub calls_sent: AtomicU64,
    pub results: AtomicU64,
    pub errors: AtomicU64,
    pub sessions: AtomicU64,
    pub calls_answered: AtomicU64,
    /// Amperes per phase each charger draws right now (what a site meter
    /// would see, ahead of the chargers' own meter values).
    pub drawing: std::sync::Mutex<std::collections::BTreeMap<String, f64>>,
}

/// Run the simulation; returns the counters.
pub async fn run(opts: SimOptions) -> Arc<SimStats> {
    let stats = Arc::new(SimStats::default());
    run_with(opts, stats.clone()).await;
    stats
}

/// Run the simulation, counting into `stats` while it runs.
pub async fn run_with(opts: SimOptions, stats: Arc<SimStats>) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for n in 1..=opts.chargers {
        let id = format!("{}{}", opts.prefix, n);
        tasks.push(tokio::spawn(charger(
            id,
            opts.clone(),
            stats.clone(),
            stop.clone(),
        )));
    }
    match opts.duration {
        Some(d) => tokio::time::sleep(d).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    // Chargers leave with a WebSocket close, as a real one going offline would.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        futures_util::future::join_all(tasks),
    )
    .await;
}

async fn charger(
    id: String,
    opts: SimOptions,
    stats: Arc<SimStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stopped = *stop.borrow();
        if stopped {
            return;
        }
        match SimCharger::connect(&id, &opts).await {
            Ok(mut c) => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                let why = tokio::select! {
                    why = c.run(&opts, &stats) => why,
                    _ = stop.changed() => {
                        let _ = c.ws.close(None).await;
                        // Read until the gateway answers the close.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async { while c.ws.next().await.is_some() {} }).await;
                        return;
                    }
                };
                log::info!("sim {id}: {why}");
            }
            Err(e) => log::warn!("sim {id}: cannot connect: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct SimCharger {
    id: String,
    ws: Ws,
    outbox: VecDeque<(String, Value)>,
    in_flight: Option<(String, String)>,
    next_msg: u64,
    booted: bool,
    transaction: Option<i64>,
    charging: bool,
    meter_wh: i64,
    meter_sent: u32,
    reboot_at: Option<Instant>,
    /// Charging profiles held (`csChargingProfiles`).
    profiles: Vec<Value>,
    /// Suspended by a limit below the minimum current.
    suspended: bool,
    /// Amperes per phase drawn now.
    drawing: f64,
    /// Its configuration keys.
    config: Vec<(String, String)>,
    clock_offset_s: i64,
    silent: bool,
    /// Speaking OCPP 2.0.1: what the 1.6 logic sends and is asked, restated.
    v201: Option<v201::Adapter>,
}

/// Below this a session cannot run (IEC 61851).
const MIN_CURRENT: f64 = 6.0;
const ELECTRICAL: crate::smart::profile::Electrical = crate::smart::profile::Electrical {
    unit: crate::smart::profile::RateUnit::Amps,
    phases: 3,
    voltage: 230.0,
};

impl SimCharger {
    async fn connect(id: &str, opts: &SimOptions) -> anyhow::Result<SimCharger> {
        let url = format!("{}/{}", opts.url.trim_end_matches('/'), id);
        let mut req = url.as_str().into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(opts.ocpp.as_str()),
        );
        if let Some(pw) = &opts.password {
            let v = HeaderValue::from_str(&basic_auth(id, pw))?;
            req.headers_mut().insert("Authorization", v);
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(SimCharger {
            id: id.to_string(),
            ws,
            outbox: VecDeque::new(),
            in_flight: None,
            next_msg: 0,
            booted: false,
            transaction: None,
            charging: false,
            meter_wh: 0,
            meter_sent: 0,
            reboot_at: None,
            profiles: Vec::new(),
            suspended: false,
            drawing: 0.0,
            config: opts.configuration(),
            clock_offset_s: opts.clock_offset_s,
            silent: opts.silent,
            v201: (opts.ocpp == Protocol::Ocpp201).then(|| v201::Adapter::new(id)),
        })
    }

    /// What the charger's clock says now.
    fn now(&self) -> String {
        let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(self.clock_offset_s);
        crate::clock::format_ms(t)
    }

    fn config_value(&self, key: &str) -> &str {
        self.config
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    fn queue(&mut self, action: &str, payload: Value) {
        self.outbox.push_back((action.to_string(), payload));
    }

    fn status(&mut self, status: &str) {
        let p = json!({"connectorId": 1, "errorCode": "NoError", "status": status, "timestamp": self.now()});
        self.queue("StatusNotification", p);
    }

    fn start(&mut self, id_tag: &str) {
        self.status("Preparing");
        let p = json!({"connectorId": 1, "idTag": id_tag, "meterStart": self.meter_wh, "timestamp": self.now()});
        self.queue("StartTransaction", p);
    }

    /// The current the held profiles allow now (32 A without any).
    fn limit(&self, opts: &SimOptions) -> f64 {
        crate::smart::profile::composite(&self.profiles, opts.clock.now(), &ELECTRICAL)
            .unwrap_or(32.0)
            .min(32.0)
    }

    /// Follow the limit: suspend below the minimum, resume above it.
    fn follow_limit(&mut self, opts: &SimOptions) {
        if self.transaction.is_none() {
            return;
        }
        let limit = self.limit(opts);
        if self.charging && limit < MIN_CURRENT {
            self.charging = false;
            self.suspended = true;
            self.status("SuspendedEVSE");
        } else if self.suspended && limit >= MIN_CURRENT {
            self.suspended = false;
            self.charging = true;
            self.status("Charging");
        }
    }

    fn set_profile(&mut self, req: &Value) -> Value {
        let p = &req["csChargingProfiles"];
        let (Some(id), Some(level), Some(purpose)) = (
            p["chargingProfileId"].as_i64(),
            p["stackLevel"].as_i64(),
            p["chargingProfilePurpose"].as_str(),
        ) else {
            return json!({"status": "Rejected"});
        };
        if purpose == "ChargePointMaxProfile" && req["connectorId"] != 0 {
            return json!({"status": "Rejected"});
        }
        // A new profile replaces one with the same id, or the same level and purpose.
        self.profiles.retain(|q| {
            q["chargingProfileId"].as_i64() != Some(id)
                && !(q["stackLevel"].as_i64() == Some(level)
                    && q["chargingProfilePurpose"].as_str() == Some(purpose))
        });
        self.profiles.push(p.clone());
        json!({"status": "Accepted"})
    }

    fn clear_profile(&mut self, req: &Value) -> Value {
        let before = self.profiles.len();
        self.profiles.retain(|q| {
            let matches =
                |key: &str, field: &str| req.get(key).is_none_or(|v| q.get(field) == Some(v));
            let hit = match req.get("id") {
                Some(id) => q.get("chargingProfileId") == Some(id),
                None => {
                    matches("chargingProfilePurpose", "chargingProfilePurpose")
                        && matches("stackLevel", "stackLevel")
                }
            };
            !hit
        });
        json!({"status": if self.profiles.len() < before { "Accepted" } else { "Unknown" }})
    }

    fn stop(&mut self, reason: &str) {
        if let Some(tx) = self.transaction.take() {
            self.charging = false;
            self.suspended = false;
            let p = json!({"transactionId": tx, "meterStop": self.meter_wh, "timestamp": self.now(), "reason": reason});
            self.queue("StopTransaction", p);
            self.status("Finishing");
            self.status("Available");
        }
    }

    fn meter_values(&self) -> Value {
        // The measurands its MeterValuesSampledData names, as a charger does.
        let sampled = self.config_value("MeterValuesSampledData");
        let samples: Vec<Value> = [
            (
                "Energy.Active.Import.Register",
                self.meter_wh.to_string(),
                "Wh",
            ),
            (
                "Power.Active.Import",
                format!("{:.0}", self.drawing * 230.0 * 3.0),
                "W",
            ),
            ("Current.Import", format!("{:.1}", self.drawing), "A"),
        ]
        .into_iter()
        .filter(|(m, _, _)| sampled.split(',').any(|s| s.trim() == *m))
        .map(|(m, v, u)| json!({"value": v, "measurand": m, "unit": u}))
        .collect();
        let mut p = json!({"connectorId": 1, "meterValue": [{"timestamp": self.now(), "sampledValue": samples}]});
        if let Some(tx) = self.transaction {
            p["transactionId"] = json!(tx);
        }
        p
    }

    async fn send_next(&mut self, stats: &SimStats) -> anyhow::Result<()> {
        if self.in_flight.is_some() {
            return Ok(());
        }
        if let Some((action, mut payload)) = self.outbox.pop_front() {
            // 2.0.1: the 1.6 call restated (one may become two: the rest
            // goes next, marked `=` as already 2.0.1).
            let wire = match (&mut self.v201, action.strip_prefix('=')) {
                (_, Some(raw)) => raw.to_string(),
                (None, None) => action.clone(),
                (Some(a), None) => {
                    let mut calls = a.outgoing(&action, &payload).into_iter();
                    let (first, p) = calls.next().unwrap_or((action.clone(), payload.clone()));
                    for (rest, p) in calls.rev() {
                        self.outbox.push_front((format!("={rest}"), p));
                    }
                    payload = p;
                    first
                }
            };
            self.next_msg += 1;
            let id = if self.v201.is_some() {
                // 2.0.1 message ids: at most 36 characters.
                format!("sim-{}-{}", self.next_msg, fastrand::u32(..))
            } else {
                format!("{}-{}", self.id, self.next_msg)
            };
            self.ws
                .send(Message::text(frame::call(&id, &wire, &payload)))
                .await?;
            stats.calls_sent.fetch_add(1, Ordering::Relaxed);
            self.in_flight = Some((id, action));
        }
        Ok(())
    }

    async fn run(&mut self, opts: &SimOptions, stats: &SimStats) -> String {
        self.queue("BootNotification", json!({"chargePointVendor": "ChargeGate", "chargePointModel": "Simulator", "firmwareVersion": env!("CARGO_PKG_VERSION"), "chargePointSerialNumber": self.id}));
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + opts.heartbeat, opts.heartbeat);
        let mut meter =
            tokio::time::interval_at(Instant::now() + opts.meter_interval, opts.meter_interval);
        let mut next_session = Instant::now() + opts.idle;
        let mut follow = tokio::time::interval(Duration::from_millis(250));
        loop {
            if let Err(e) = self.send_next(stats).await {
                return format!("send failed: {e}");
            }
            let reboot_at = self.reboot_at;
            tokio::select! {
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Err(e) = self.on_text(t.as_str(), opts, stats).await {
                            return format!("{e:#}");
                        }
                    }
                    Some(Ok(Message::Close(f))) => return format!("closed by the gateway: {f:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return format!("connection lost: {e}"),
                    None => return "connection lost".into(),
                },
                _ = heartbeat.tick(), if self.booted => self.queue("Heartbeat", json!({})),
                _ = follow.tick() => {
                    self.follow_limit(opts);
                    self.drawing = if self.charging { self.limit(opts) } else { 0.0 };
                    if let Ok(mut d) = stats.drawing.lock() {
                        d.insert(self.id.clone(), self.drawing);
                    }
                }
                _ = meter.tick(), if self.booted && self.transaction.is_some() => {
                    let watts = self.drawing * 230.0 * 3.0;
                    self.meter_wh += (watts * opts.meter_interval.as_secs_f64() / 3600.0).max(1.0) as i64;
                    self.queue("MeterValues", self.meter_values());
                    self.meter_sent += 1;
                    if self.meter_sent >= opts.meter_values_per_session {
                        self.stop("Local");
                        next_session = Instant::now() + opts.idle;
                    }
                }
                _ = tokio::time::sleep_until(next_session), if self.booted && self.transaction.is_none() && self.outbox.is_empty() && self.in_flight.is_none() => {
                    self.queue("Authorize", json!({"idTag": opts.id_tag}));
                    self.start(&opts.id_tag.clone());
                    next_session = Instant::now() + Duration::from_secs(86_400);
                }
                _ = tokio::time::sleep_until(reboot_at.unwrap_or_else(Instant::now)), if reboot_at.is_some() => {
                    let _ = self.ws.close(None).await;
                    return "rebooting (Reset)".into();
                }
            }
        }
    }
}

/// Upload a small diagnostics file over HTTP PUT, as a charger does after
/// GetDiagnostics (http:// locations only).
async fn upload(location: String, id: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(rest) = location.strip_prefix("http://") else {
        return;
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let body = format!("{id} simulated diagnostics, {}\n", now_rfc3339());
    let file = format!("{}/{id}-diagnostics.log", path.trim_end_matches('/'));
    let Ok(mut s) = tokio::net::TcpStream::connect(host).await else {
        return;
    };
    let req = format!("PUT {file} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    if s.write_all(req.as_bytes()).await.is_ok() {
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        log::info!(
            "sim {id}: diagnostics uploaded: {}",
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or("")
        );
    }
}
