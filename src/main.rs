//! The `chargegate` binary: the daemon and the installer's CLI. Thin: it
//! parses arguments and calls into the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chargegate::api::Status;
use chargegate::client::{self, ApiClient};
use chargegate::config::{Config, ConfigError, EMBEDDED_NAME};
use chargegate::event::Record;
use clap::{Parser, Subcommand};

/// Exit code for a bad config (EX_USAGE), so systemd does not restart.
const EXIT_CONFIG: u8 = 64;
/// Where the Debian package puts the config.
const SYSTEM_CONFIG: &str = "/etc/chargegate/chargegate.toml";

#[derive(Parser)]
#[command(
    name = "chargegate",
    version,
    about = "Edge site controller for EV charging sites (OCPP proxy with a durable journal)"
)]
struct Cli {
    /// Config file. Default: $CHARGEGATE_CONFIG, else /etc/chargegate/chargegate.toml
    /// if it exists, else the embedded default (standalone, loopback only).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (the default when no command is given).
    Run,
    /// Check a config file (FILE, or --config FILE, or the one the daemon
    /// would use); prints every problem and exits 64 if there are any.
    CheckConfig { file: Option<PathBuf> },
    /// Hash a charger password for the config (reads it from stdin, one
    /// line); the config then holds `password = "pbkdf2-sha256$…"`.
    HashPassword,
    /// Show every charger: links, connectors, transactions, last event.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Is this site ready? Checks every charger (configuration, clock,
    /// meter values, smart charging, errors), the meter, the cloud, the
    /// schedules, the journal and the disk, and says what to fix. Changes
    /// nothing. Exit code 0: no problem; 1: at least one problem.
    SiteCheck {
        /// The report as JSON.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for each charger's answers.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Show the journal.
    Log {
        #[arg(long)]
        charger: Option<String>,
        /// Event kinds, comma-separated (e.g. StartTransaction,StopTransaction).
        #[arg(long)]
        kind: Option<String>,
        /// 2h, 30m, 1d, or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Show the newest N events (0: all of them).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Keep printing new events.
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the messages the cloud refused for good (dead letters) of a charger.
    DeadLetters {
        charger: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a remote action on a charger: reboot, start, stop, force-stop,
    /// check, diagnostics, unlock, enable, disable, trigger, get-config,
    /// change-config; and the gateway's own pause, resume, limit.
    Action(ActionArgs),
    /// Simulate OCPP 1.6 (or 2.0.1) chargers against a gateway (or any CSMS).
    Sim(SimArgs),
    /// Measure the relay: latency through the gateway vs direct, memory, journal rate.
    Bench(chargegate::bench::BenchArgs),
}

/// `chargegate action`'s arguments.
#[derive(clap::Args)]
struct ActionArgs {
    /// The action: reboot, start, stop, force-stop, check, diagnostics,
    /// unlock, enable, disable, trigger, get-config, change-config,
    /// pause, resume, limit.
    name: String,
    /// The charge point id.
    charger: String,
    /// The connector (the EVSE for OCPP 2.0.1): start, stop,
    /// force-stop, unlock, trigger (default 1); enable/disable (default
    /// 0: the whole charger).
    #[arg(long)]
    connector: Option<u32>,
    /// start: the id tag to start with (default: [api] default_id_tag).
    #[arg(long)]
    id_tag: Option<String>,
    /// reboot: hard reset.
    #[arg(long)]
    hard: bool,
    /// get-config / change-config: the key.
    #[arg(long)]
    key: Option<String>,
    /// change-config: the value.
    #[arg(long)]
    value: Option<String>,
    /// trigger: the message (StatusNotification, Heartbeat, MeterValues, BootNotification).
    #[arg(long)]
    message: Option<String>,
    /// limit: the current cap in amperes.
    #[arg(long)]
    amps: Option<f64>,
    /// pause / limit: until when (RFC 3339 or a span like 90m, 2h).
    #[arg(long)]
    until: Option<String>,
    /// Print the whole result as JSON.
    #[arg(long)]
    json: bool,
}

/// `chargegate sim`'s arguments.
#[derive(clap::Args)]
struct SimArgs {
    /// Base URL; the charger id is appended.
    #[arg(long, default_value = "ws://127.0.0.1:8887/ocpp")]
    url: String,
    #[arg(long, default_value_t = 3)]
    chargers: usize,
    #[arg(long, default_value = "SIM-")]
    prefix: String,
    #[arg(long)]
    password: Option<String>,
    #[arg(long, default_value = "SIMTAG01")]
    id_tag: String,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 60.0)]
    heartbeat: f64,
    /// Seconds between meter values while charging.
    #[arg(long, default_value_t = 5.0)]
    meter_interval: f64,
    #[arg(long, default_value_t = 6)]
    meter_values: u32,
    /// Seconds idle between sessions.
    #[arg(long, default_value_t = 10.0)]
    idle: f64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// A configuration key the chargers report differently, as
    /// KEY=VALUE (repeatable), e.g. MeterValueSampleInterval=900 or
    /// MeterValuesSampledData=Energy.Active.Import.Register (the meter
    /// values then carry only those measurands).
    #[arg(long = "config-key", value_name = "KEY=VALUE", value_parser = key_value)]
    config_key: Vec<(String, String)>,
    /// Seconds the chargers' clocks are ahead (negative: behind).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    clock_offset: i64,
    /// The chargers answer no call from the gateway.
    #[arg(long)]
    silent: bool,
    /// The OCPP version the chargers speak: 1.6 or 2.0.1.
    #[arg(long, default_value = "1.6", value_parser = ocpp_version)]
    ocpp: chargegate::ocpp::Protocol,
}

/// The config file in use: `--config`, `$CHARGEGATE_CONFIG`, the system
/// one if it exists; `None` means the embedded default.
fn config_path(explicit: Option<&PathBuf>) -> Option<PathBuf> {
    explicit
        .cloned()
        .or_else(|| std::env::var_os("CHARGEGATE_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let p = PathBuf::from(SYSTEM_CONFIG);
            p.is_file().then_some(p)
        })
}

fn load_config(explicit: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match config_path(explicit) {
        Some(p) => Config::load(&p),
        None => Config::parse(chargegate::config::EMBEDDED, EMBEDDED_NAME),
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.01))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, None | Some(Cmd::Run))
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
    {
        // The daemon relays on one worker thread: a relay is I/O-bound, and
        // a session that never changes threads saves the cross-core wake-ups
        // (about a fifth of the CPU per message in `chargegate bench`, and
        // p99 latency). Storage and blocking work have threads of their own.
        builder.worker_threads(1);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chargegate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Cmd::Run);
    if let Cmd::HashPassword = &command {
        return hash_password();
    }
    if let Cmd::CheckConfig { file } = &command {
        return check_config(file.clone().or_else(|| config_path(cli.config.as_ref())));
    }
    let cfg = match load_config(cli.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("chargegate: bad config: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The CLI commands talk to the running daemon's API.
    let api = ApiClient {
        addr: cfg.api.listen,
        token: cfg.api.token.clone(),
    };
    let result = rt.block_on(async move {
        match command {
            Cmd::Run => {
                chargegate::logging::init(cfg.gateway.log_level);
                chargegate::daemon::run(cfg, config_path(cli.config.as_ref())).await
            }
            Cmd::CheckConfig { .. } | Cmd::HashPassword => Ok(()),
            Cmd::Status { json } => status(&api, json).await,
            Cmd::SiteCheck { json, timeout } => site_check(&api, json, timeout).await,
            Cmd::Log {
                charger,
                kind,
                since,
                limit,
                follow,
                json,
            } => log_command(&api, charger, kind, since, limit, follow, json).await,
            Cmd::DeadLetters { charger, json } => dead_letters(&api, charger, json).await,
            Cmd::Action(args) => action(&api, args).await,
            Cmd::Sim(args) => sim(args).await,
            Cmd::Bench(args) => chargegate::bench::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chargegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `chargegate hash-password`: a password from stdin, hashed for the config.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        eprintln!("chargegate: cannot read the password from stdin");
        return ExitCode::FAILURE;
    }
    let pw = line.trim_end_matches(['\r', '\n']);
    if let Err(why) = chargegate::password::check_strength(pw) {
        eprintln!("chargegate: weak password: {why}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match chargegate::password::hash(pw) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chargegate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `chargegate check-config`: the file's problems, all at once.
fn check_config(file: Option<PathBuf>) -> ExitCode {
    let Some(file) = file else {
        println!("no config file: the daemon would run on the embedded default, which is valid");
        return ExitCode::SUCCESS;
    };
    match Config::load(&file) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: OK ({} chargers, {}, {} schedule(s), load management {})",
                file.display(),
                c.chargers.len(),
                c.upstream
                    .as_ref()
                    .map_or("standalone".into(), |u| format!("cloud {}", u.url)),
                c.smart.schedules.len(),
                match (&c.smart.load, &c.smart.meter) {
                    (Some(l), Some(m)) => format!("on ({} A fuse, meter {})", l.fuse, m.model),
                    _ => "off".into(),
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `chargegate status`.
async fn status(api: &ApiClient, json: bool) -> anyhow::Result<()> {
    let s: Status = api.get("/api/v1/status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", client::format_status(&s));
    }
    Ok(())
}

/// `chargegate site-check`: the commissioning report; exit 1 when it
/// finds something to fix.
async fn site_check(api: &ApiClient, json: bool, timeout: u64) -> anyhow::Result<()> {
    let r: chargegate::site_check::SiteReport = api
        .get(&format!("/api/v1/site-check?timeout_secs={timeout}"))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", chargegate::site_check::format_text(&r));
    }
    if r.problems > 0 {
        // Scripts read the exit code: 1 = something to fix.
        std::io::Write::flush(&mut std::io::stdout())?;
        std::process::exit(1);
    }
    Ok(())
}

/// `chargegate dead-letters CHARGER`.
async fn dead_letters(api: &ApiClient, charger: String, json: bool) -> anyhow::Result<()> {
    let dead: Vec<chargegate::outbox::DeadLetter> = api
        .get(&format!("/api/v1/chargers/{}/dead-letters", enc(&charger)))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&dead)?);
    } else if dead.is_empty() {
        println!("{charger}: no dead letters");
    }
    for d in dead.iter().filter(|_| !json) {
        println!(
            "{}  {} after {} attempt(s): {}\n    {}",
            chargegate::clock::format_unix_ms(d.dead_ms),
            d.entry.action,
            d.entry.attempts,
            d.error,
            d.entry.payload
        );
    }
    Ok(())
}

/// `chargegate action NAME CHARGER`: one remote action through the API.
async fn action(api: &ApiClient, a: ActionArgs) -> anyhow::Result<()> {
    let (name, charger, json) = (a.name.as_str(), a.charger.as_str(), a.json);
    let body = serde_json::to_value(chargegate::actions::ActionRequest {
        connector: a.connector,
        id_tag: a.id_tag,
        hard: a.hard,
        key: a.key,
        value: a.value,
        message: a.message,
        amps: a.amps,
        until: a.until,
    })?;
    let r: chargegate::api::ActionResult = api
        .post(
            &format!("/api/v1/chargers/{}/actions/{}", enc(charger), enc(name)),
            &body,
        )
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if r.action == "check" {
        print!(
            "{}",
            client::format_check(
                &r.charger,
                r.result.as_ref().unwrap_or(&serde_json::Value::Null)
            )
        );
    } else {
        println!("{}", client::format_action(&r));
    }
    if r.outcome == "result" {
        Ok(())
    } else {
        anyhow::bail!("{}", r.error.unwrap_or(r.outcome))
    }
}

/// `chargegate sim`: simulated chargers, and what they did.
async fn sim(a: SimArgs) -> anyhow::Result<()> {
    chargegate::logging::init(log::LevelFilter::Info);
    let opts = chargegate::sim::SimOptions {
        clock: Default::default(),
        url: a.url,
        chargers: a.chargers,
        prefix: a.prefix,
        password: a.password,
        id_tag: a.id_tag,
        heartbeat: secs(a.heartbeat),
        meter_interval: secs(a.meter_interval),
        meter_values_per_session: a.meter_values.max(1),
        idle: secs(a.idle),
        duration: a.duration.map(secs),
        config: a.config_key,
        clock_offset_s: a.clock_offset,
        silent: a.silent,
        ocpp: a.ocpp,
    };
    let stats = chargegate::sim::run(opts).await;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "sim: {} connects, {} sessions, {} calls sent ({} answered, {} errors), {} calls from the gateway answered",
        n(&stats.connects),
        n(&stats.sessions),
        n(&stats.calls_sent),
        n(&stats.results),
        n(&stats.errors),
        n(&stats.calls_answered)
    );
    Ok(())
}

/// A value percent-encoded for a URL path segment or query.
fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn log_command(
    api: &ApiClient,
    charger: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    limit: usize,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut base = String::new();
    if let Some(c) = &charger {
        base.push_str(&format!("&charger={}", enc(c)));
    }
    if let Some(k) = &kind {
        base.push_str(&format!("&kind={}", enc(k)));
    }
    let mut url = format!("/api/v1/events?limit={limit}{base}");
    if let Some(s) = &since {
        url.push_str(&format!("&since={}", enc(s)));
    }
    let mut last = 0;
    let mut out = std::io::stdout().lock();
    loop {
        let records: Vec<Record> = api.get(&url).await?;
        for r in &records {
            let line = if json {
                serde_json::to_string(r)?
            } else {
                client::format_record(r)
            };
            // A reader that went away (`chargegate log | head`) ends the
            // command quietly, as for any Unix filter.
            if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e.into());
            }
            last = last.max(r.seq);
        }
        if !follow {
            if limit > 0 && records.len() == limit && last > 0 {
                eprintln!(
                    "(the newest {limit} events; --limit N shows more, --limit 0 all of them)"
                );
            }
            return Ok(());
        }
        if last == 0 {
            let s: Status = api.get("/api/v1/status").await?;
            last = s.journal_last_seq;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        url = format!("/api/v1/events?limit=10000&after={last}{base}");
    }
}

/// `1.6` or `2.0.1` (or the subprotocol names), for `sim --ocpp`.
fn ocpp_version(s: &str) -> Result<chargegate::ocpp::Protocol, String> {
    let token = if s.starts_with("ocpp") {
        s.to_string()
    } else {
        format!("ocpp{s}")
    };
    chargegate::ocpp::Protocol::parse(&token)
        .ok_or_else(|| format!("expected 1.6 or 2.0.1, found {s:?}"))
}

/// `KEY=VALUE`, for `sim --config-key`.
fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE, found {s:?}")),
    }
}
