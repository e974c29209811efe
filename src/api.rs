//! The local HTTP API (JSON) that the CLI and the web page use, and the
//! page itself (`/`, embedded):
//! chargers and their live state, the journal with filters, and a stream of
//! new events (Server-Sent Events). Bound to loopback by default; a token,
//! when configured, is required on every request.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query as UrlQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::hub::Ctx;
use crate::journal::Query;
use crate::password::constant_time_eq;
use crate::state::ChargerState;

/// Query parameters of the journal endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct EventParams {
    pub charger: Option<String>,
    /// Comma-separated event kinds.
    pub kind: Option<String>,
    /// `2h`, `30m`, `1d`, an RFC 3339 time, or milliseconds since the epoch.
    pub since: Option<String>,
    pub until: Option<String>,
    pub after: Option<u64>,
    pub limit: Option<usize>,
    pub token: Option<String>,
}

/// One charger in the status answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChargerView {
    pub state: ChargerState,
    /// Whether a session for it is live right now.
    pub connected: bool,
    /// Whether it is listed in the config.
    pub known: bool,
    /// Transaction messages waiting for the cloud, and dead letters.
    pub outbox: crate::outbox::Stats,
}

/// The status answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub gateway: String,
    pub version: String,
    pub upstream: Option<String>,
    pub journal_records: u64,
    pub journal_last_seq: u64,
    pub journal_alarm: Option<String>,
    pub chargers: Vec<ChargerView>,
    /// Smart charging: load management, the meter, every limit now.
    #[serde(default)]
    pub smart: crate::smart::status::SmartStatus,
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

/// Serve the API until shutdown.
pub async fn serve(listener: TcpListener, ctx: Ctx) {
    let shutdown = ctx.shutdown.clone();
    crate::http::serve(listener, router(ctx), BOUNDS, "api", shutdown).await
}

/// The API's bounds: a few staff, the CLI, the web page, a monitoring
/// script (a Server-Sent Events stream holds one connection each).
const BOUNDS: crate::http::Bounds = crate::http::Bounds {
    max_connections: 64,
    max_per_address: 16,
    header_timeout: std::time::Duration::from_secs(10),
};

fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/chargers/{id}", get(charger))
        .route("/api/v1/chargers/{id}/dead-letters", get(dead_letters))
        .route(
            "/api/v1/chargers/{id}/actions/{name}",
            axum::routing::post(action),
        )
        .route("/api/v1/chargers/{id}/diagnostics", get(diagnostics_list))
        .route(
            "/api/v1/chargers/{id}/diagnostics/{file}",
            get(diagnostics_file),
        )
        .route("/api/v1/site-check", get(site_check))
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/stream", get(stream))
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        .layer(middleware::from_fn(same_site_only))
        // The page itself holds no data; everything it shows needs the token.
        .route("/", get(page))
        .layer(middleware::from_fn_with_state(ctx.clone(), known_host_only))
        .with_state(ctx)
}

/// The web page for installers and staff, embedded in the binary.
const PAGE: &str = include_str!("web/index.html");

async fn page() -> Response {
    (
        [
            ("content-type", "text/html; charset=utf-8"),
            (
                "content-security-policy",
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
            ("x-frame-options", "DENY"),
        ],
        PAGE,
    )
        .into_response()
}

/// CSRF: a request that changes something must be JSON (which another
/// site's page cannot send without a CORS preflight, never granted here)
/// and, when the browser names its origin, come from this very host. This
/// matters most without a token (loopback), where a page in a browser on
/// the gateway could otherwise press buttons.
async fn same_site_only(req: Request, next: Next) -> Response {
    use axum::http::Method;
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    let h = req.headers();
    let json = h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send JSON (Content-Type: application/json)",
        );
    }
    if let Some(origin) = h.get("origin").and_then(|v| v.to_str().ok()) {
        let host = h.get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.split("://").nth(1).unwrap_or(origin);
        if origin_host != host {
            return error(StatusCode::FORBIDDEN, "cross-site request refused");
        }
    }
    next.run(req).await
}

/// DNS rebinding: a page on a name the attacker controls, resolved to the
/// gateway, is refused by name. The API answers to IP addresses,
/// `localhost`, this machine's host name (and `.local`), and `[api]
/// host_names`; what the request came from (loopback, a browser, a claim
/// of being the CLI) then decides its journal source.
async fn known_host_only(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !host.is_empty() && !known_host(&host, &ctx.cfg.api.host_names) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown host name: the API answers to its IP addresses, localhost, this machine's name and [api] host_names",
        );
    }
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let source = source_of(req.headers(), peer, &host);
    req.extensions_mut().insert(source);
    next.run(req).await
}

/// Whether `host` (a Host header, port and all) names this API.
fn known_host(host: &str, configured: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split(']')
            .next()
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(n, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host
            }
        })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || configured.contains(&name)
    {
        return true;
    }
    let me = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    !me.is_empty() && (name == me || name == format!("{me}.local"))
}

/// The journal source of an API request, from what the gateway can see:
/// `web` for the gateway's own page (a browser names it as Origin or
/// Referer), `cli` for a request from this machine without a browser that
/// says it is the CLI, `api` for anything else. A header alone never makes
/// a remote request `cli` or `mqtt`.
fn source_of(
    h: &axum::http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
    host: &str,
) -> crate::event::Source {
    use crate::event::Source;
    let origin = h
        .get("origin")
        .or_else(|| h.get("referer"))
        .and_then(|v| v.to_str().ok())
        .map(|o| {
            o.split("://")
                .nth(1)
                .unwrap_or(o)
                .split('/')
                .next()
                .unwrap_or("")
        });
    let claim = h.get("x-chargegate-source").and_then(|v| v.to_str().ok());
    match origin {
        Some(o) if !host.is_empty() && o == host => Source::Web,
        Some(_) => Source::Api,
        None if claim == Some("cli") && peer.is_some_and(|p| p.ip().is_loopback()) => Source::Cli,
        None => Source::Api,
    }
}

async fn auth(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let Some(token) = ctx.cfg.api.token.as_deref() else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(|t| {
                percent_encoding::percent_decode_str(t)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    });
    match bearer.or(from_query) {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token (Authorization: Bearer TOKEN)",
        ),
    }
}

fn view(ctx: &Ctx) -> Status {
    let cfg = ctx.live.get();
    let state = ctx.journal.state();
    let connected = ctx.registry.connected();
    let mut chargers: Vec<ChargerView> = state
        .chargers
        .into_values()
        .map(|s| ChargerView {
            connected: connected.contains(&s.id),
            known: cfg.chargers.contains_key(&s.id),
            outbox: ctx.journal.outbox_stats(&s.id).unwrap_or_default(),
            state: (*s).clone(),
        })
        .collect();
    for id in cfg.chargers.keys() {
        if !chargers.iter().any(|c| &c.state.id == id) {
            chargers.push(ChargerView {
                state: ChargerState {
                    id: id.clone(),
                    ..Default::default()
                },
                connected: false,
                known: true,
                outbox: ctx.journal.outbox_stats(id).unwrap_or_default(),
            });
        }
    }
    chargers.sort_by(|a, b| a.state.id.cmp(&b.state.id));
    let (records, last) = ctx.journal.stats().unwrap_or((0, 0));
    Status {
        gateway: ctx.cfg.gateway.id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        upstream: ctx.cfg.upstream.as_ref().map(|u| u.url.clone()),
        journal_records: records,
        journal_last_seq: last,
        journal_alarm: ctx.journal.alarm(),
        chargers,
        smart: ctx.smart.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

/// Run storage reads on a blocking thread, so that a big status or
/// journal request never holds up the runtime that relays the chargers.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `view` reads storage for every charger.
async fn view_off_runtime(ctx: Ctx) -> Result<Status, Response> {
    off_runtime(move || view(&ctx)).await
}

async fn status(State(ctx): State<Ctx>) -> Response {
    match view_off_runtime(ctx).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn charger(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    let v = match view_off_runtime(ctx).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match v.chargers.into_iter().find(|c| c.state.id == id) {
        Some(c) => Json(c).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("unknown charger {id:?}")),
    }
}

pub use crate::dispatch::ActionResult;

/// `GET /api/v1/site-check[?timeout_secs=N]`: the commissioning report.
async fn site_check(
    State(ctx): State<Ctx>,
    UrlQuery(q): UrlQuery<std::collections::HashMap<String, String>>,
    axum::Extension(source): axum::Extension<crate::event::Source>,
) -> Response {
    let per_charger = match q.get("timeout_secs").map(|s| s.parse::<u64>()) {
        None => crate::site_check::CHARGER_TIMEOUT,
        Some(Ok(s)) if (1..=120).contains(&s) => std::time::Duration::from_secs(s),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "timeout_secs: expected whole seconds from 1 to 120",
            )
        }
    };
    Json(crate::site_check::run(&ctx, source, per_charger).await).into_response()
}

async fn action(
    State(ctx): State<Ctx>,
    Path((id, name)): Path<(String, String)>,
    axum::Extension(source): axum::Extension<crate::event::Source>,
    body: Option<Json<crate::actions::ActionRequest>>,
) -> Response {
    use crate::dispatch::Error;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    match crate::dispatch::run(&ctx, id, name, req, source).await {
        Ok(r) => Json(r).into_response(),
        Err(e @ Error::UnknownCharger(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ Error::Offline(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ Error::Refused(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn diagnostics_list(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    Json(crate::diagnostics::list(&ctx.cfg.gateway.data_dir, &id)).into_response()
}

async fn diagnostics_file(
    State(ctx): State<Ctx>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    let Some(name) = crate::diagnostics::safe_name(&file).filter(|n| *n == file) else {
        return error(StatusCode::BAD_REQUEST, "bad file name");
    };
    match tokio::fs::read(crate::diagnostics::dir_of(&ctx.cfg.gateway.data_dir, &id).join(&name))
        .await
    {
        Ok(bytes) => (
            [
                ("content-type", "application/octet-stream".to_string()),
                (
                    "content-disposition",
                    format!("attachment; filename=\"{name}\""),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => error(
            StatusCode::NOT_FOUND,
            format!("no diagnostics file {name:?} for {id:?}"),
        ),
    }
}

async fn dead_letters(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    match ctx.journal.dead_letters(&id) {
        Ok(d) => Json(d).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A query parameter that does not parse, and which one.
#[derive(Debug, thiserror::Error)]
#[error("{param}: {source}")]
struct BadParam {
    param: &'static str,
    source: BadTime,
}

fn to_query(p: &EventParams) -> Result<Query, BadParam> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let time = |s: &Option<String>, param: &'static str| -> Result<Option<i64>, BadParam> {
        s.as_deref()
            .map(|s| parse_time(s, now).map_err(|source| BadParam { param, source }))
            .transpose()
    };
    Ok(Query {
        charger: p.charger.clone().filter(|c| !c.is_empty()),
        kinds: p
            .kind
            .as_deref()
            .map(|k| {
                k.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        since_ms: time(&p.since, "since")?,
        until_ms: time(&p.until, "until")?,
        after_seq: p.after,
        limit: p.limit.unwrap_or(200).min(100_000),
    })
}

async fn events(State(ctx): State<Ctx>, UrlQuery(p): UrlQuery<EventParams>) -> Response {
    let q = match to_query(&p) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // Up to 100,000 records: read and rendered on a blocking thread, off
    // the runtime that relays the chargers.
    let journal = ctx.journal.clone();
    let out = off_runtime(move || {
        journal.query(&q).map(|records| {
            // Each record with a one-line summary, as the CLI's log shows it.
            records
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["summary"] = r.event.summary().into();
                    v
                })
                .collect::<Vec<serde_json::Value>>()
        })
    })
    .await;
    match out {
        Ok(Ok(out)) => Json(out).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(r) => r,
    }
}

async fn stream(State(ctx): State<Ctx>, UrlQuery(p): UrlQuery<EventParams>) -> Response {
    let q = match to_query(&p) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let rx = ctx.journal.subscribe();
    let s = futures_util::stream::unfold((rx, q), |(mut rx, q)| async move {
        loop {
            match rx.recv().await {
                Ok(rec) => {
                    let charger_ok = q.charger.is_none() || rec.charger == q.charger;
                    let kind_ok = q.kinds.is_empty()
                        || q.kinds
                            .iter()
                            .any(|k| k.eq_ignore_ascii_case(rec.event.kind()));
                    if charger_ok && kind_ok {
                        let data = serde_json::to_string(&*rec).unwrap_or_default();
                        let ev = SseEvent::default().id(rec.seq.to_string()).data(data);
                        return Some((Ok::<_, Infallible>(ev), (rx, q)));
                    }
                }
                // A slow reader missed some: it can fetch them by sequence number.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let ev = SseEvent::default().event("lagged").data(n.to_string());
                    return Some((Ok(ev), (rx, q)));
                }
                Err(_) => return None,
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// Parse `2h` / `30m` / `45s` / `7d` (that long ago), an RFC 3339 time, or
/// milliseconds since the epoch.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, BadTime> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Some(unit) = s.chars().last() {
        let mult = match unit {
            's' => Some(1_000),
            'm' => Some(60_000),
            'h' => Some(3_600_000),
            'd' => Some(86_400_000),
            _ => None,
        };
        // The unit is one ASCII byte, so the number is the rest (a last
        // character of several bytes matches no unit).
        let ago = mult.and_then(|m| s[..s.len() - 1].parse::<i64>().ok()?.checked_mul(m));
        if let Some(ago) = ago {
            return Ok(now_ms.saturating_sub(ago));
        }
    }
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| BadTime(s.to_string()))
}

/// A time `parse_time` cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 2h, 30m, 1d, an RFC 3339 time or epoch milliseconds, found {0:?}")]
pub struct BadTime(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_specs() {
        assert_eq!(parse_time("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert_eq!(parse_time("30m", 3_600_000), Ok(1_800_000));
        assert_eq!(parse_time("1700000000000", 0), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2026-01-01T00:00:00Z", 0), Ok(1_767_225_600_000));
        assert!(parse_time("yesterday", 0).is_err());
        assert!(parse_time("h", 0).is_err());
        // Regression (issue 16): a multi-byte last character panicked the
        // handler, and a huge count overflowed.
        assert!(parse_time("é", 0).is_err());
        assert!(parse_time("2é", 0).is_err());
        assert_eq!(parse_time("9223372036854775807d", 0).ok(), None);
    }
}
