//! The daemon's lifecycle: open the journal, bind the listeners, serve, and
//! on shutdown drain every session and flush the journal. Tests start the
//! same thing in-process through `start`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::event::Event;
use crate::hub::{Ctx, Registry};
use crate::journal::{self, Journal, JournalConfig};
use crate::server;
use crate::upstream::Connector;

/// How long sessions get to close cleanly on shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("TLS for the wss:// listener ([ocpp] tls_cert, tls_key, client_ca): {0}")]
    Tls(String),
    /// (The I/O error is part of the message, not a `source`: printing
    /// the error chain would say it twice.)
    #[error("cannot listen on {addr}, the address of {what} in the config: {error} (another program, or another chargegate, holds it; set {what} to a free address)")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        error: std::io::Error,
    },
}

/// A running daemon.
pub struct Running {
    pub ocpp_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub journal: Journal,
    pub registry: Registry,
    /// The wss:// listener's address, when configured.
    pub tls_addr: Option<SocketAddr>,
    /// The clock schedules run on; tests move it.
    pub clock: crate::clock::Clock,
    /// The config in force; [`reload`] swaps its live parts.
    pub live: crate::config::Live,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    core: Core,
}

/// The daemon's core tasks (listeners, API, smart charging, meter, MQTT,
/// uploads), supervised: none of them may end before shutdown.
#[derive(Default)]
pub struct Core {
    tasks: JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Core {
    fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Wait until a core task ends (it returned or panicked) and say which
    /// and how. Never returns while they all run.
    pub async fn failed(&mut self) -> String {
        let Some(done) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, how) = match done {
            Ok((id, ())) => (id, "ended".to_string()),
            Err(e) if e.is_panic() => (e.id(), format!("panicked: {}", panic_message(e))),
            Err(e) => (e.id(), format!("was cancelled: {e}")),
        };
        let name = self.names.get(&id).copied().unwrap_or("a core task");
        format!("{name} {how}")
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let p = e.into_panic();
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Bind a listener; errors name the config key. Port 0 binds a free port,
/// so the bound address is returned too.
async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |error| StartError::Bind { addr, what, error };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// Open storage, bind the listeners and start serving.
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    let cfg = Arc::new(cfg);
    let journal = Journal::open(JournalConfig {
        path: journal::path_in(&cfg.gateway.data_dir),
        max_age: cfg.journal.max_age,
        max_bytes: cfg.journal.max_bytes,
        commit_interval: cfg.journal.commit_interval,
    })?;
    let connector = match &cfg.upstream {
        Some(u) => Some(Arc::new(Connector::new(
            u,
            server::ws_config(cfg.ocpp.max_message_size),
            &cfg.chargers,
        )?)),
        None => None,
    };
    let (ocpp, ocpp_addr) = bind(cfg.ocpp.listen, "ocpp.listen").await?;
    let (api, api_addr) = bind(cfg.api.listen, "api.listen").await?;
    let (upload, upload_addr) = bind(cfg.diagnostics.listen, "diagnostics.listen").await?;
    journal
        .record_durable(
            None,
            Event::GatewayStarted {
                version: env!("CARGO_PKG_VERSION").into(),
            },
        )
        .await?;

    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    let registry = Registry::default();
    let uploads = crate::diagnostics::Uploads::default();
    let clock = crate::clock::Clock::default();
    let smart = crate::smart::status::StatusHandle::default();
    let live = crate::config::Live::new(cfg.clone());
    let mirrors: Arc<dyn crate::hub::MirrorHub> = if cfg.mirrors.is_empty() {
        Arc::new(crate::hub::NoMirrors)
    } else {
        Arc::new(crate::mirror::Mirrors::new(&cfg)?)
    };
    let ctx = Ctx {
        mirrors,
        conns: Default::default(),
        live: live.clone(),
        clock: clock.clone(),
        smart: smart.clone(),
        uploads: uploads.clone(),
        upload_addr,
        cfg: cfg.clone(),
        journal: journal.clone(),
        connector,
        registry: registry.clone(),
        shutdown: shutdown.clone(),
        sessions: sessions.clone(),
    };
    let mut core = Core::default();
    core.spawn("the OCPP listener", server::serve(ocpp, ctx.clone(), None));
    let tls_addr = spawn_tls_listener(&mut core, &ctx).await?;
    warn_plain_chargers(&cfg);
    spawn_parts(&mut core, ctx, api, upload);
    log_listening(&cfg, ocpp_addr, api_addr);
    Ok(Running {
        ocpp_addr,
        api_addr,
        journal,
        registry,
        tls_addr,
        clock,
        live,
        shutdown,
        sessions,
        core,
    })
}

/// Where the gateway listens, and for which cloud.
fn log_listening(cfg: &Config, ocpp_addr: SocketAddr, api_addr: SocketAddr) {
    match &cfg.upstream {
        Some(u) => log::info!(
            "ocpp on ws://{ocpp_addr}{}/{{id}}, cloud {}",
            cfg.ocpp.path_prefix,
            u.url
        ),
        None => log::info!(
            "ocpp on ws://{ocpp_addr}{}/{{id}}, standalone (no [upstream])",
            cfg.ocpp.path_prefix
        ),
    }
    log::info!("api on http://{api_addr}");
}

/// The core tasks beside the listeners: the meter, MQTT, the smart
/// engine, the diagnostics uploads and the API.
fn spawn_parts(core: &mut Core, ctx: Ctx, api: TcpListener, upload: TcpListener) {
    let cfg = ctx.cfg.clone();
    let meter = cfg.smart.meter.clone().map(|m| {
        let (tx, rx) = watch::channel(crate::meter::MeterStatus::default());
        core.spawn(
            "the meter reader",
            crate::meter::run(m, ctx.clock.clone(), tx, ctx.shutdown.clone()),
        );
        rx
    });
    if let Some(m) = cfg.mqtt.clone() {
        core.spawn("the MQTT client", crate::mqtt::run(ctx.clone(), m));
    }
    core.spawn(
        "the smart charging engine",
        crate::smart::engine::run(ctx.clone(), ctx.clock.clone(), meter, ctx.smart.clone()),
    );
    core.spawn(
        "the diagnostics upload listener",
        crate::diagnostics::serve(
            upload,
            ctx.uploads.clone(),
            cfg.gateway.data_dir.clone(),
            ctx.journal.clone(),
            cfg.diagnostics.max_bytes,
            ctx.shutdown.clone(),
        ),
    );
    core.spawn("the HTTP API", crate::api::serve(api, ctx));
}

/// The wss:// listener (Security Profiles 2 and 3), when configured.
async fn spawn_tls_listener(core: &mut Core, ctx: &Ctx) -> Result<Option<SocketAddr>, StartError> {
    let cfg = &ctx.cfg;
    let Some(t) = &cfg.ocpp.tls else {
        return Ok(None);
    };
    let server = crate::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref())
        .map_err(StartError::Tls)?;
    let (listener, addr) = bind(t.listen, "ocpp.tls_listen").await?;
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    core.spawn(
        "the wss:// OCPP listener",
        server::serve(listener, ctx.clone(), Some(acceptor)),
    );
    log::info!(
        "ocpp on wss://{addr}{}/{{id}} (security profiles 2 and 3)",
        cfg.ocpp.path_prefix
    );
    Ok(Some(addr))
}

/// Security Profile 1 is for trusted networks only: said at start.
fn warn_plain_chargers(cfg: &Config) {
    let plain: Vec<&str> = cfg
        .chargers
        .values()
        .filter(|c| c.profile == 1)
        .map(|c| c.id.as_str())
        .collect();
    if !plain.is_empty() || cfg.ocpp.allow_unknown {
        log::warn!(
            "security profile 1 (plain ws://, Basic auth at most) for {}{}: for trusted networks only",
            if plain.is_empty() { "no listed charger".to_string() } else { format!("{} charger(s): {}", plain.len(), plain.iter().take(10).copied().collect::<Vec<_>>().join(", ")) },
            if cfg.ocpp.allow_unknown { ", and any unknown charger (allow_unknown_chargers)" } else { "" }
        );
    }
}

impl Running {
    /// Stop accepting, close every session (each journals its disconnect),
    /// then flush and close the journal.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.sessions.close();
        if tokio::time::timeout(DRAIN_GRACE, self.sessions.wait())
            .await
            .is_err()
        {
            log::warn!(
                "{} charger connection(s) still open after {}s; closing anyway",
                self.sessions.len(),
                DRAIN_GRACE.as_secs()
            );
        }
        self.core.tasks.shutdown().await;
        let _ = self
            .journal
            .record_durable(None, Event::GatewayStopping)
            .await;
        self.journal.close().await;
    }
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The file has problems; the running config stays.
    Invalid(String),
    Unchanged,
    /// Applied what applies live; `restart` lists changed sections that
    /// need a restart (not applied).
    Applied {
        live: bool,
        restart: Vec<&'static str>,
    },
}

/// SIGHUP: read the config file again and apply what applies live
/// (chargers and their passwords, schedules, load management settings)
/// without dropping anyone; say which other changes need a restart.
pub fn reload(path: &std::path::Path, live: &crate::config::Live) -> Reloaded {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return Reloaded::Invalid(e.to_string()),
    };
    let now = live.get();
    let restart = now.restart_needed(&new);
    let next = now.with_live_parts(&new);
    let changed = format!("{next:?}") != format!("{now:?}");
    if changed {
        live.set(next);
    }
    if !changed && restart.is_empty() {
        return Reloaded::Unchanged;
    }
    Reloaded::Applied {
        live: changed,
        restart,
    }
}

fn reload_and_log(path: Option<&std::path::Path>, live: &crate::config::Live) {
    let Some(path) = path else {
        log::warn!("SIGHUP: running on the embedded default config; nothing to reload");
        return;
    };
    match reload(path, live) {
        Reloaded::Invalid(e) => {
            log::error!("SIGHUP: the config file has problems, keeping the running config:\n{e}")
        }
        Reloaded::Unchanged => log::info!("SIGHUP: {} unchanged", path.display()),
        Reloaded::Applied { live, restart } => {
            if live {
                log::info!(
                    "SIGHUP: applied {}: chargers, schedules and load management as of now",
                    path.display()
                );
            }
            if !restart.is_empty() {
                log::warn!(
                    "SIGHUP: {} changed in {}; restart chargegate to apply those",
                    path.display(),
                    restart.join(", ")
                );
            }
        }
    }
}

/// Run until SIGTERM or SIGINT. Prints one `READY` line on stdout with the
/// bound addresses, which scripts and tests read.
pub async fn run(cfg: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    raise_fd_limit();
    for w in &cfg.warnings {
        log::warn!("config: {w}");
    }
    let mut running = start(cfg).await?;
    // Signal handlers first: once READY is out, systemd may signal at once.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    println!("READY ocpp={} api={}", running.ocpp_addr, running.api_addr);
    let notify = crate::notify::Notifier::from_env();
    notify.send("READY=1");
    let period = crate::notify::Notifier::watchdog_interval();
    let mut watchdog = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
    let mut failed = None;
    loop {
        tokio::select! {
            why = running.core.failed() => {
                // Never a healthy-looking daemon with a dead part: exit
                // non-zero, and systemd (Restart=on-failure) starts it anew.
                log::error!("{why}; stopping so that the service restarts");
                failed = Some(why);
                break;
            }
            _ = term.recv() => { log::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { log::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => reload_and_log(config_path.as_deref(), &running.live),
            _ = watchdog.tick(), if period.is_some() => {
                // Healthy means the main loop runs and the journal's writer
                // answers (a commit that fails still answers; a hung disk
                // does not, and then systemd restarts the daemon).
                let probe = tokio::time::timeout(period.unwrap_or_default(), running.journal.commit(Vec::new())).await;
                if probe.is_ok() {
                    notify.send("WATCHDOG=1");
                } else {
                    log::error!("journal writer does not answer; not pinging the watchdog");
                }
            }
        }
    }
    notify.send("STOPPING=1");
    running.stop().await;
    match failed {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(()),
    }
}

/// Raise the open-files limit to its hard maximum (a gateway with a
/// thousand chargers holds two sockets per charger).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_core_task_that_ends_or_panics_is_named() {
        let mut core = Core::default();
        core.spawn("the quiet one", std::future::pending());
        core.spawn("the meter reader", async {});
        assert_eq!(core.failed().await, "the meter reader ended");
        core.spawn("the smart charging engine", async {
            panic!("median of nothing");
        });
        assert_eq!(
            core.failed().await,
            "the smart charging engine panicked: median of nothing"
        );
        // While the rest run, nothing is reported.
        let quiet = tokio::time::timeout(Duration::from_millis(50), core.failed()).await;
        assert!(quiet.is_err(), "{quiet:?}");
    }
}
