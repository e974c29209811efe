//! Second backends (`[[mirror]]`): every charger's traffic fed to another
//! CSMS, read-only unless its own calls are allowed.
//!
//! One link task per (mirror, charger), started when the charger connects
//! and kept until its backlog is delivered after the charger left. The
//! session hands it what the charger sent through a bounded channel
//! (`Feed::send` never waits), so a mirror that is down, slow or noisy
//! never delays the charger, the primary or another mirror. The link sends
//! the charger's CALLs in order, one at a time, under its own message ids,
//! and consumes the mirror's answers; it maps the charger's transaction ids
//! to the mirror's own (durably) and rewrites MeterValues and
//! StopTransaction for it. While the mirror is away, what it misses waits
//! in a bounded backlog, written to the journal's outbox tables so that it
//! survives a restart. The mirror's own CALLs reach the charger only when
//! listed in `allow`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::config::{Config, MirrorConfig};
use crate::event::Event;
use crate::hub::{Ctx, MirrorFeed, MirrorHub, MirrorMsg as Msg, Registry};
use crate::journal::{Journal, Op};

use crate::ocpp::{Action, Protocol};
use crate::upstream::{basic_auth, Connector, UpStream, UpstreamError};

mod frames;

/// How many messages a session may have on their way to one mirror link
/// before they are dropped (the link drains them into its backlog at
/// once; this fills only if the link task itself is stuck).
const FEED: usize = 1024;

/// The running links by (mirror, charger).
type LinkMap = HashMap<(String, String), mpsc::Sender<Msg>>;

/// The mirrors of a gateway, and their running links.
#[derive(Clone, Default)]
pub struct Mirrors {
    configs: Arc<Vec<(Arc<MirrorConfig>, Arc<Connector>)>>,
    links: Arc<Mutex<LinkMap>>,
}

/// What a mirror link needs from the gateway.
#[derive(Clone)]
pub struct LinkCtx {
    pub journal: Journal,
    pub registry: Registry,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// How long the mirror may take to answer a call.
    pub call_timeout: Duration,
}

impl Mirrors {
    /// The configured mirrors, their TLS set up.
    pub fn new(cfg: &Config) -> Result<Mirrors, UpstreamError> {
        let ws = crate::server::ws_config(cfg.ocpp.max_message_size);
        let configs = cfg
            .mirrors
            .iter()
            .map(|m| {
                // Each charger's client certificate for this mirror, as
                // `[[charger]] upstream_cert` is for the cloud.
                let identities = m
                    .certs
                    .iter()
                    .map(|(id, (cert, key))| {
                        let c = crate::config::ChargerConfig {
                            id: id.clone(),
                            password: None,
                            upstream_password: None,
                            upstream_identity: Some((cert.clone(), key.clone())),
                            profile: 1,
                            limits: Default::default(),
                        };
                        (id.clone(), c)
                    })
                    .collect();
                let c = Connector::new(&m.link, ws, &identities)?;
                Ok((Arc::new(m.clone()), Arc::new(c)))
            })
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        Ok(Mirrors {
            configs: Arc::new(configs),
            links: Arc::default(),
        })
    }

    /// The feeds for charger `id`'s session, one per mirror that sees it,
    /// starting (or reusing) each mirror's link for it.
    pub fn attach_with(&self, ctx: &LinkCtx, id: &str, proto: Protocol) -> Vec<MirrorFeed> {
        let mut out = Vec::new();
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        for (cfg, connector) in self.configs.iter().filter(|(c, _)| c.applies_to(id)) {
            let key = (cfg.name.clone(), id.to_string());
            let tx = match links.get(&key) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(FEED);
                    let link = Link::new(ctx.clone(), cfg.clone(), connector.clone(), id, proto);
                    let all = self.links.clone();
                    let k = key.clone();
                    tokio::spawn(async move {
                        link.run(rx).await;
                        let mut l = all.lock().unwrap_or_else(|e| e.into_inner());
                        if l.get(&k).is_some_and(|t| t.is_closed()) {
                            l.remove(&k);
                        }
                    });
                    links.insert(key, tx.clone());
                    tx
                }
            };
            out.push(MirrorFeed::new(cfg.name.clone(), tx));
        }
        out
    }
}

impl MirrorHub for Mirrors {
    fn attach(&self, ctx: &Ctx, id: &str, proto: Protocol) -> Vec<MirrorFeed> {
        if self.configs.is_empty() {
            return Vec::new();
        }
        let link = LinkCtx {
            journal: ctx.journal.clone(),
            registry: ctx.registry.clone(),
            shutdown: ctx.shutdown.clone(),
            call_timeout: ctx.cfg.ocpp.call_timeout,
        };
        self.attach_with(&link, id, proto)
    }
}

/// One queued message for the mirror.
#[derive(Debug, Clone)]
struct Item {
    action: crate::ocpp::Action,
    payload: String,
    /// Its outbox key, once written to the backlog.
    stored: Option<u64>,
}

/// One mirror's link for one charger.
struct Link {
    ctx: LinkCtx,
    cfg: Arc<MirrorConfig>,
    connector: Arc<Connector>,
    charger: String,
    proto: Protocol,
    /// Its backlog's key in the outbox tables.
    key: String,
    queue: VecDeque<Item>,
    in_flight: Option<(String, Item, Instant)>,
    next_id: u64,
    /// The charger's transaction id → the mirror's.
    tx_map: HashMap<i64, i64>,
    /// Per connector: the charger's transaction ids whose StartTransaction
    /// the mirror has not answered yet, and the mirror's ids not yet
    /// matched to one of the charger's.
    charger_started: HashMap<u32, VecDeque<i64>>,
    mirror_started: HashMap<u32, VecDeque<i64>>,
    session_alive: bool,
    last_error: Option<String>,
    dropped: u64,
}

impl Link {
    fn new(
        ctx: LinkCtx,
        cfg: Arc<MirrorConfig>,
        connector: Arc<Connector>,
        charger: &str,
        proto: Protocol,
    ) -> Link {
        let key = format!("mirror:{}\u{1f}{charger}", cfg.name);
        // What it missed before (a restart while it was away).
        let queue = ctx
            .journal
            .outbox(&key)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, e)| Item {
                action: e.action,
                payload: e.payload,
                stored: Some(k),
            })
            .collect();
        let tx_map = ctx
            .journal
            .tx_map(&key)
            .unwrap_or_default()
            .into_iter()
            .collect();
        Link {
            ctx,
            cfg,
            connector,
            charger: charger.to_string(),
            proto,
            key,
            queue,
            in_flight: None,
            next_id: 0,
            tx_map,
            charger_started: HashMap::new(),
            mirror_started: HashMap::new(),
            session_alive: true,
            last_error: None,
            dropped: 0,
        }
    }

    fn journal(&self, ev: Event) {
        let j = self.ctx.journal.clone();
        let id = self.charger.clone();
        tokio::spawn(async move { j.record(Some(&id), ev).await });
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut backoff = self.connector.backoff();
        let mut ws: Option<UpStream> = None;
        let mut retry_at = Instant::now();
        let (answers_tx, mut answers_rx) = mpsc::channel::<String>(4);
        let mut mirror_call_busy = false;
        let mut garbage = 0u32;
        loop {
            let done = !self.session_alive && self.queue.is_empty() && self.in_flight.is_none();
            if done {
                // The charger left and the mirror has everything: it sees
                // the charger go.
                if close(&mut ws).await {
                    self.journal(Event::MirrorDisconnect {
                        mirror: self.cfg.name.clone(),
                        reason: "charger disconnected".into(),
                    });
                }
                return;
            }
            // Connect when due (the feed waits in the channel meanwhile,
            // never the session).
            if ws.is_none() && Instant::now() >= retry_at {
                match self.connect().await {
                    None => return,
                    Some(Ok(s)) => {
                        backoff.reset();
                        ws = Some(s);
                        garbage = 0;
                    }
                    Some(Err(e)) => {
                        retry_at = self.link_failed(&mut backoff, e.to_string());
                    }
                }
            }
            if let Some(s) = ws.as_mut() {
                if let Err(e) = self.send_next(s).await {
                    ws = None;
                    retry_at = self.link_failed(&mut backoff, e.to_string());
                    continue;
                }
            }
            let wake = self.wake_at(ws.is_none().then_some(retry_at));
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => self.take(m, ws.is_some()),
                    None => self.session_alive = false,
                },
                frame = next(ws.as_mut()) => match frame {
                    Some(Ok(Message::Text(t))) => {
                        let readable = self.on_frame(t.as_str(), &answers_tx, &mut mirror_call_busy);
                        garbage += u32::from(!readable);
                        if garbage > 100 {
                            // A mirror that only sends garbage is dropped for a while.
                            close(&mut ws).await;
                            retry_at = self.link_failed(&mut backoff, "the mirror sent more than 100 unreadable frames".into());
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        close(&mut ws).await;
                        retry_at = self.link_failed(&mut backoff, "the mirror closed the connection".into());
                    }
                    Some(Ok(_)) => {}
                },
                Some(answer) = answers_rx.recv() => {
                    mirror_call_busy = false;
                    send_answer(&mut ws, answer).await;
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => self.on_timer(),
                _ = self.ctx.shutdown.cancelled() => {
                    // What it has not got yet is kept for next time.
                    self.store_backlog();
                    close(&mut ws).await;
                    return;
                }
            }
        }
    }

    /// The link failed: journaled (once per reason); returns when to
    /// try again.
    fn link_failed(&mut self, backoff: &mut crate::upstream::Backoff, why: String) -> Instant {
        self.link_down(why);
        Instant::now() + backoff.next_delay()
    }

    /// One attempt to open the mirror link, offering the charger's
    /// protocol with the charger's (or the mirror's) credentials. `None`:
    /// the gateway is shutting down.
    async fn connect(&mut self) -> Option<Result<UpStream, crate::upstream::ConnectError>> {
        let auth = self
            .cfg
            .password_for(&self.charger)
            .map(|p| basic_auth(&self.charger, p));
        let offer = [self.proto];
        let attempt = self
            .connector
            .connect(&self.charger, &offer, auth.as_deref());
        let res = tokio::select! {
            r = attempt => r,
            _ = self.ctx.shutdown.cancelled() => return None,
        };
        Some(res.map(|(s, p)| {
            self.last_error = None;
            self.journal(Event::MirrorConnect {
                mirror: self.cfg.name.clone(),
                remote: self.connector.url_for(&self.charger),
                protocol: p.as_str().into(),
            });
            s
        }))
    }

    /// When the loop wakes by itself: the entry in flight's timeout, or
    /// the next connection attempt (`retry_at`, while the link is down).
    fn wake_at(&self, retry_at: Option<Instant>) -> Instant {
        let timeout_at = self
            .in_flight
            .as_ref()
            .map(|(_, _, sent)| *sent + self.ctx.call_timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        retry_at.map_or(timeout_at, |r| r.min(timeout_at))
    }

    /// The mirror did not answer the entry in flight in time: it is
    /// counted as delivered and the feed goes on.
    fn on_timer(&mut self) {
        let Some((_, item, sent)) = &self.in_flight else {
            return;
        };
        if sent.elapsed() >= self.ctx.call_timeout {
            log::info!(
                "mirror {}: {}: no answer to {} in time; going on",
                self.cfg.name,
                self.charger,
                item.action
            );
            let (_, item, _) = self.in_flight.take().expect("checked");
            self.delivered(&item);
        }
    }

    /// The link is down: journaled once per reason; the backlog is
    /// written so that it survives a restart.
    fn link_down(&mut self, why: String) {
        if let Some((_, item, _)) = self.in_flight.take() {
            self.queue.push_front(item);
        }
        if self.last_error.as_deref() != Some(why.as_str()) {
            log::warn!("mirror {}: {}: {why}", self.cfg.name, self.charger);
            self.journal(Event::MirrorDisconnect {
                mirror: self.cfg.name.clone(),
                reason: why.clone(),
            });
            self.last_error = Some(why);
        }
        self.store_backlog();
    }

    /// Write what is only in memory to the backlog.
    fn store_backlog(&mut self) {
        let mut ops = Vec::new();
        for item in self.queue.iter_mut().filter(|i| i.stored.is_none()) {
            let key = self.ctx.journal.next_outbox_key();
            item.stored = Some(key);
            ops.push(Op::Outbox(crate::outbox::Op::Push {
                charger: self.key.clone(),
                key,
                entry: crate::outbox::Entry {
                    action: item.action.clone(),
                    payload: item.payload.clone(),
                    queued_ms: jiff::Timestamp::now().as_millisecond(),
                    attempts: 0,
                    local_tx: None,
                },
            }));
        }
        if !ops.is_empty() {
            let j = self.ctx.journal.clone();
            tokio::spawn(async move { j.submit(ops).await });
        }
    }

    /// A message from the session.
    fn take(&mut self, msg: Msg, up: bool) {
        match msg {
            Msg::Call { action, payload } => {
                // (A new session of the charger may take over a link still
                // delivering the last one's backlog.)
                self.session_alive = true;
                if self.queue.len() >= self.cfg.backlog {
                    self.drop_one();
                }
                self.queue.push_back(Item {
                    action: action.into(),
                    payload,
                    stored: None,
                });
                if !up {
                    self.store_backlog();
                }
            }
            Msg::Started { connector, tx } => match self
                .mirror_started
                .get_mut(&connector)
                .and_then(VecDeque::pop_front)
            {
                Some(m) => self.map(tx, m),
                None => self
                    .charger_started
                    .entry(connector)
                    .or_default()
                    .push_back(tx),
            },
            Msg::SessionEnded => self.session_alive = false,
        }
    }

    /// The backlog is full: drop the oldest message that is not a
    /// transaction message, else the oldest.
    fn drop_one(&mut self) {
        let at = self
            .queue
            .iter()
            .position(|i| !crate::outbox::is_transaction_message(&i.action, &i.payload))
            .unwrap_or(0);
        if let Some(item) = self.queue.remove(at) {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                log::warn!("mirror {}: {}: backlog full ({}); {} message(s) dropped, oldest first, transaction messages last", self.cfg.name, self.charger, self.cfg.backlog, self.dropped);
            }
            self.forget(&item);
        }
    }

    fn forget(&self, item: &Item) {
        if let Some(key) = item.stored {
            let op = Op::Outbox(crate::outbox::Op::Remove {
                charger: self.key.clone(),
                key,
            });
            let j = self.ctx.journal.clone();
            tokio::spawn(async move { j.submit(vec![op]).await });
        }
    }

    fn delivered(&mut self, item: &Item) {
        self.forget(item);
    }

    fn map(&mut self, charger_tx: i64, mirror_tx: i64) {
        self.tx_map.insert(charger_tx, mirror_tx);
        if self.tx_map.len() > 1000 {
            // Old sessions: the map only needs the running ones.
            let oldest = *self.tx_map.keys().min().expect("not empty");
            self.tx_map.remove(&oldest);
        }
        let op = Op::Outbox(crate::outbox::Op::MapTx {
            charger: self.key.clone(),
            local: charger_tx,
            cloud: mirror_tx,
        });
        let j = self.ctx.journal.clone();
        tokio::spawn(async move { j.submit(vec![op]).await });
    }

    /// Send the next queued message when none is out.
    async fn send_next(&mut self, ws: &mut UpStream) -> Result<(), WriteError> {
        if self.in_flight.is_some() {
            return Ok(());
        }
        let Some(item) = self.queue.pop_front() else {
            return Ok(());
        };
        self.next_id += 1;
        let id = format!("mr-{}", self.next_id);
        let payload = self.rewrite(&item);
        let text = format!("[2,{},{},{payload}]", json!(id), json!(item.action));
        match tokio::time::timeout(Duration::from_secs(10), ws.send(Message::text(text))).await {
            Ok(Ok(())) => {
                self.in_flight = Some((id, item, Instant::now()));
                Ok(())
            }
            Ok(Err(e)) => {
                self.queue.push_front(item);
                Err(WriteError::Failed(e))
            }
            Err(_) => {
                self.queue.push_front(item);
                Err(WriteError::TimedOut)
            }
        }
    }

    /// The payload for the mirror: the charger's transaction id replaced by
    /// the mirror's own (1.6 MeterValues and StopTransaction).
    fn rewrite(&self, item: &Item) -> String {
        if self.proto != Protocol::Ocpp16
            || !matches!(item.action, Action::MeterValues | Action::StopTransaction)
        {
            return item.payload.clone();
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&item.payload) else {
            return item.payload.clone();
        };
        match v["transactionId"]
            .as_i64()
            .and_then(|t| self.tx_map.get(&t))
        {
            Some(m) => {
                v["transactionId"] = json!(m);
                v.to_string()
            }
            None => item.payload.clone(),
        }
    }
}

async fn next(
    ws: Option<&mut UpStream>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Close the mirror link, if open, within two seconds; whether it was.
async fn close(ws: &mut Option<UpStream>) -> bool {
    let Some(mut s) = ws.take() else {
        return false;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), SinkExt::close(&mut s)).await;
    true
}

/// The gateway's answer to a call of the mirror's, sent within five seconds.
async fn send_answer(ws: &mut Option<UpStream>, answer: String) {
    if let Some(s) = ws.as_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.send(Message::text(answer))).await;
    }
}

/// Why a message could not be written to the mirror.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("write failed: {0}")]
    Failed(tokio_tungstenite::tungstenite::Error),
    #[error("write timed out")]
    TimedOut,
}
