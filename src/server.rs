//! The charger side: accepts WebSocket connections on
//! `ws://LISTEN{prefix}/{chargePointId}`, decides at the handshake who may
//! connect (path, subprotocol, OCPP Security Profile 1 Basic auth, known
//! chargers) and hands each accepted connection to its own session task.

use std::net::SocketAddr;

use base64::Engine;
use percent_encoding::percent_decode_str;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::machine::TryParse;
use tokio_tungstenite::tungstenite::handshake::server::{
    create_response, write_response, Request, Response,
};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::WebSocketStream;

use crate::config::{check_charger_id, Config};
use crate::event::Event;
use crate::hub::{Accepted, Ctx};
use crate::ocpp::Protocol;
use crate::password::constant_time_eq;
use crate::session;
use crate::tls::{ChargerStream, Transport};
use crate::upstream::ConnectError;

/// Bytes read from a socket at a time. Most OCPP frames are well under
/// this; a bigger one takes a few reads. Each connection keeps a buffer of
/// about this size, and it is zeroed before each read.
const READ_CHUNK: usize = 2048;

/// WebSocket settings for both sides: small buffers, because a gateway
/// holds hundreds of connections (tungstenite's defaults reserve 128 KiB
/// of read buffer per connection).
pub fn ws_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_CHUNK)
        .write_buffer_size(0)
        .max_write_buffer_size(max_message_size * 4)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

/// A connection the handshake refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
    /// The charge point id, when it is a known charger.
    pub known_id: Option<String>,
}

fn refuse(status: StatusCode, reason: impl Into<String>, known_id: Option<&str>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
        known_id: known_id.map(str::to_string),
    }
}

/// Decide whether a handshake request may connect, given how the charger
/// reached the gateway (its security profile). Pure.
pub fn check_request(
    req: &Request,
    cfg: &Config,
    transport: &Transport,
) -> Result<Accepted, Refusal> {
    let id = charger_id_of(req, cfg)?;
    let known = cfg.chargers.get(&id);
    if known.is_none() && !cfg.ocpp.allow_unknown {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("unknown charge point {id:?}"),
            None,
        ));
    }
    let offered = req
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let offered_list = Protocol::offered(offered);
    let holds = |p| cfg.answers_itself(p, false);
    let proto = Protocol::choose_alone(&offered_list, holds).ok_or_else(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("no supported subprotocol offered ({offered:?}); offer ocpp1.6 or ocpp2.0.1"),
            known.map(|c| c.id.as_str()),
        )
    })?;
    let authorization = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    check_security(known, &id, authorization.as_deref(), transport)?;
    Ok(Accepted {
        id,
        proto,
        offered: offered_list,
        authorization,
        tls: transport.tls,
    })
}

/// The charge point id the request's path names, under the path prefix.
fn charger_id_of(req: &Request, cfg: &Config) -> Result<String, Refusal> {
    let path = req.uri().path();
    let rest = path
        .strip_prefix(cfg.ocpp.path_prefix.as_str())
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                format!("path {path:?} is not under {}/", cfg.ocpp.path_prefix),
                None,
            )
        })?;
    let id = percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                "charge point id is not valid UTF-8",
                None,
            )
        })?
        .into_owned();
    check_charger_id(&id).map_err(|why| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("bad charge point id: {why}"),
            None,
        )
    })?;
    Ok(id)
}

/// The charger's security profile: wss:// for 2 and 3, the client
/// certificate for 3, the Basic auth password when it has one.
fn check_security(
    known: Option<&crate::config::ChargerConfig>,
    id: &str,
    authorization: Option<&str>,
    transport: &Transport,
) -> Result<(), Refusal> {
    let profile = known.map_or(1, |c| c.profile);
    if profile >= 2 && !transport.tls {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("security profile {profile}: this charger must connect with wss://, not ws://"),
            Some(id),
        ));
    }
    if profile == 3 && transport.client_cn.as_deref() != Some(id) {
        let why = match &transport.client_cn {
            None => "security profile 3: no client certificate".to_string(),
            Some(cn) => {
                format!("security profile 3: the client certificate is for {cn:?}, not {id:?}")
            }
        };
        return Err(refuse(StatusCode::FORBIDDEN, why, Some(id)));
    }
    if let Some(expected) = known.and_then(|c| c.password.as_deref()) {
        let ok = authorization
            .and_then(parse_basic)
            .is_some_and(|(user, pass)| {
                // Both compared in full, so timing does not tell which was wrong.
                let u = constant_time_eq(user.as_bytes(), id.as_bytes());
                let p = verify_off_worker(expected, &pass);
                u & p
            });
        if !ok {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "missing or wrong Basic auth credentials",
                Some(id),
            ));
        }
    }
    Ok(())
}

/// Check a password against its stored form. A stored hash costs 100,000
/// PBKDF2 rounds, tens of ms on a Pi, and this runs inside the handshake
/// callback, which cannot await: on the daemon's multi-thread runtime the
/// worker first hands its other sessions to another thread, so a reconnect
/// storm of hashed chargers never stalls the relay.
fn verify_off_worker(stored: &str, given: &[u8]) -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(|| crate::password::verify(stored, given))
    } else {
        crate::password::verify(stored, given)
    }
}

/// Split an `Authorization: Basic …` value into user and password bytes.
fn parse_basic(header: &str) -> Option<(String, Vec<u8>)> {
    let b64 = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((user, raw[colon + 1..].to_vec()))
}

/// Accept chargers on `listener` (wss:// when `tls` is given) until
/// shutdown.
pub async fn serve(listener: TcpListener, ctx: Ctx, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    match ctx.conns.admit(addr.ip(), ctx.cfg.ocpp.max_connections, ctx.cfg.ocpp.max_connections_per_ip) {
                        Ok(place) => {
                            ctx.sessions.spawn(handle_connection(stream, addr, ctx.clone(), place, tls.clone()));
                        }
                        Err(why) => {
                            // Closed before the handshake costs anything.
                            drop(stream);
                            let why = why.to_string();
                            let reported = ctx.conns.report_refusal(addr.ip(), &why, None, std::time::Instant::now());
                            let logged = format!("{why} (reported once a minute per address)");
                            journal_refusal_as(&ctx, addr, logged, why, None, reported).await;
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    log::error!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = ctx.shutdown.cancelled() => break,
        }
    }
}

async fn handle_connection(
    stream: TcpStream,
    addr: SocketAddr,
    mut ctx: Ctx,
    _place: crate::limits::Admitted,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    // This connection's session runs on the config in force now.
    ctx.cfg = ctx.live.get();
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    // TLS and WebSocket handshakes together within the handshake timeout.
    let deadline = tokio::time::Instant::now() + ctx.cfg.ocpp.handshake_timeout;
    let Some((mut stream, transport)) = accept_tls(stream, addr, &ctx, tls, deadline).await else {
        return;
    };
    let Some((req, rest, mut resp)) = read_upgrade(&mut stream, addr, deadline).await else {
        return;
    };
    let now = std::time::Instant::now();
    // An address guessing passwords is refused before any is checked.
    if ctx.conns.login_blocked(addr.ip(), now) {
        let why = format!(
            "too many failed logins from this address ({} in {} s); try again later",
            crate::limits::LOGIN_BUDGET,
            crate::limits::LOGIN_WINDOW.as_secs()
        );
        let _ = write_refusal(&mut stream, StatusCode::TOO_MANY_REQUESTS, &why).await;
        let reported = ctx.conns.report_login_failure(addr.ip(), now);
        return journal_refusal(&ctx, addr, why, None, reported).await;
    }
    let mut acc = match check_request(&req, &ctx.cfg, &transport) {
        Ok(acc) => acc,
        Err(refusal) => {
            let _ = write_refusal(&mut stream, refusal.status, &refusal.reason).await;
            // A guesser's attempts, and any other refusal, are journaled
            // once a minute per address, not each: the journal and the log
            // are no amplifier.
            let reported = if refusal.status == StatusCode::UNAUTHORIZED {
                ctx.conns.login_failed(addr.ip(), now);
                ctx.conns.report_login_failure(addr.ip(), now)
            } else {
                let (why, id) = (&refusal.reason, refusal.known_id.as_deref());
                ctx.conns.report_refusal(addr.ip(), why, id, now)
            };
            let why = format!("{} (HTTP {})", refusal.reason, refusal.status.as_u16());
            let id = refusal.known_id.as_deref();
            return journal_refusal_as(&ctx, addr, why, refusal.reason.clone(), id, reported).await;
        }
    };
    let (conn, cmd_rx, done, old) = ctx.registry.register(&acc.id, local);
    // The old connection goes first, so the cloud never sees two.
    session::replace(old).await;
    let (connecting, failed) = negotiate(&ctx, &mut acc).await;
    resp.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(acc.proto.as_str()),
    );
    if let Err(e) = write_upgrade(&mut stream, &resp).await {
        log::debug!("{addr}: WebSocket handshake failed: {e}");
        if let Some(c) = connecting {
            c.abort();
        }
        ctx.registry.unregister(&acc.id, conn);
        let _ = done.send(true);
        return;
    }
    let cfg = ws_config(ctx.cfg.ocpp.max_message_size);
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(cfg)).await;
    let offline_disconnect =
        ctx.cfg.offline_mode_for(acc.proto) == crate::config::OfflineMode::Disconnect;
    if let (Some(e), true) = (failed, offline_disconnect) {
        close_while_cloud_away(&ctx, addr, &acc.id, &e, ws).await;
        ctx.registry.unregister(&acc.id, conn);
        let _ = done.send(true);
        return;
    }
    log::info!(target: "chargegate::session", charger_id = acc.id.as_str(); "charger {} connected from {addr} ({})", acc.id, acc.proto.as_str());
    session::run(ctx, acc, addr, ws, conn, cmd_rx, done, connecting).await;
}

/// The TLS handshake on the wss:// listener (none on ws://), and the
/// client certificate's common name. `None`: closed.
async fn accept_tls(
    stream: TcpStream,
    addr: SocketAddr,
    ctx: &Ctx,
    tls: Option<tokio_rustls::TlsAcceptor>,
    deadline: tokio::time::Instant,
) -> Option<(ChargerStream, Transport)> {
    let Some(acceptor) = tls else {
        return Some((ChargerStream::Plain(stream), Transport::default()));
    };
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            let client_cn = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::tls::common_name(c));
            let t = Transport {
                tls: true,
                client_cn,
            };
            Some((ChargerStream::Tls(Box::new(s)), t))
        }
        Ok(Err(e)) => {
            // Wrong CA, expired or unknown certificate, plain ws on the
            // wss port…: reported once a minute per address.
            let why = "TLS handshake failed";
            let now = std::time::Instant::now();
            let reported = ctx.conns.report_refusal(addr.ip(), why, None, now);
            journal_refusal(ctx, addr, format!("{why}: {e}"), None, reported).await;
            None
        }
        Err(_) => {
            log::debug!("{addr}: TLS handshake not finished in time, closed");
            None
        }
    }
}

/// The WebSocket upgrade request, what came after it, and the response
/// to it. A request that is no upgrade gets tungstenite's own answer
/// before any of ours, as tungstenite's handshake does. `None`: answered
/// and closed.
async fn read_upgrade(
    stream: &mut ChargerStream,
    addr: SocketAddr,
    deadline: tokio::time::Instant,
) -> Option<(Request, Vec<u8>, Response)> {
    let (req, rest) = match tokio::time::timeout_at(deadline, read_request(stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            log::debug!("{addr}: WebSocket handshake failed: {e}");
            let _ = write_refusal(stream, StatusCode::BAD_REQUEST, &e).await;
            return None;
        }
        Err(_) => {
            log::debug!("{addr}: WebSocket handshake not finished in time, closed");
            return None;
        }
    };
    match create_response(&req) {
        Ok(resp) => Some((req, rest, resp)),
        Err(e) => {
            log::debug!("{addr}: not a WebSocket handshake: {e}");
            let _ = write_refusal(stream, StatusCode::BAD_REQUEST, &e.to_string()).await;
            None
        }
    }
}

/// Send the 101 Switching Protocols response.
async fn write_upgrade(stream: &mut ChargerStream, resp: &Response) -> std::io::Result<()> {
    let mut head = Vec::new();
    write_response(&mut head, resp).map_err(std::io::Error::other)?;
    tokio::time::timeout(CLOUD_WAIT, stream.write_all(&head))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Log and journal a refusal when its once-a-minute report is due
/// (`reported`: how many like it were not journaled since).
async fn journal_refusal(
    ctx: &Ctx,
    addr: SocketAddr,
    why: String,
    known_id: Option<&str>,
    reported: Option<u64>,
) {
    journal_refusal_as(ctx, addr, why.clone(), why, known_id, reported).await
}

/// [`journal_refusal`] with a log line (`logged`) that says more than the
/// journal's reason.
async fn journal_refusal_as(
    ctx: &Ctx,
    addr: SocketAddr,
    logged: String,
    reason: String,
    known_id: Option<&str>,
    reported: Option<u64>,
) {
    let Some(repeated) = reported else {
        return;
    };
    log::warn!("refused {addr}: {logged}");
    let ev = Event::Refused {
        reason,
        remote: addr.to_string(),
        repeated: (repeated > 0).then_some(repeated),
    };
    ctx.journal.record(known_id, ev).await;
}

/// Offline mode `disconnect` and the cloud still away: closed at once
/// (1013, Try Again Later) without a session. Journaled once per outage,
/// not three events at every attempt.
async fn close_while_cloud_away(
    ctx: &Ctx,
    addr: SocketAddr,
    id: &str,
    e: &ConnectError,
    mut ws: WebSocketStream<ChargerStream>,
) {
    if ctx.registry.cloud_away(id) {
        let ev = Event::Refused {
            reason: format!(
                "cloud unreachable ({e}): closed with 1013 (Try Again Later) until it returns; further attempts are not journaled"
            ),
            remote: addr.to_string(),
            repeated: None,
        };
        ctx.journal.record(Some(id), ev).await;
    }
    log::debug!("{addr}: {id}: cloud unreachable, closed (offline mode disconnect)");
    let frame = CloseFrame {
        code: CloseCode::Again,
        reason: "cloud unreachable".into(),
    };
    let close = async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
}

/// How long a charger's handshake waits for the cloud to choose the
/// protocol. A cloud slower than this still gets its connection (the
/// attempt goes on in the session), and a charger that was given another
/// protocol meanwhile is asked to reconnect.
const CLOUD_WAIT: Duration = Duration::from_secs(5);

/// The largest handshake request read: real ones are a few hundred bytes.
const MAX_REQUEST: usize = 8192;

/// Ask the cloud first, as a transparent proxy does: offer it the charger's
/// protocols in the charger's order and give the charger what it chose.
/// Without a cloud, or while it does not answer, the gateway chooses: what
/// the cloud last chose for this charger, else what it can answer itself.
/// Returns the attempt, finished or still on its way, for the session, and
/// why it failed if it failed in time.
async fn negotiate(
    ctx: &Ctx,
    acc: &mut Accepted,
) -> (Option<session::Connecting>, Option<ConnectError>) {
    let Some(connector) = ctx.connector.clone() else {
        return (None, None);
    };
    let auth = session::cloud_authorization(ctx, acc);
    let (id, offered) = (acc.id.clone(), acc.offered.clone());
    let mut attempt =
        tokio::spawn(async move { connector.connect(&id, &offered, auth.as_deref()).await });
    let wait = CLOUD_WAIT.min(ctx.cfg.ocpp.handshake_timeout);
    match tokio::time::timeout(wait, &mut attempt).await {
        Ok(res) => {
            let res = res.unwrap_or_else(|e| Err(ConnectError::Task(e.to_string())));
            let failed = match &res {
                Ok((_, chosen)) => {
                    acc.proto = *chosen;
                    ctx.registry.cloud_chose(&acc.id, *chosen);
                    None
                }
                Err(e) => {
                    if let Some(last) = ctx.registry.cloud_choice(&acc.id) {
                        if acc.offered.contains(&last) {
                            acc.proto = last;
                        }
                    }
                    Some(e.clone())
                }
            };
            (Some(tokio::spawn(async move { res })), failed)
        }
        Err(_) => {
            if let Some(last) = ctx.registry.cloud_choice(&acc.id) {
                if acc.offered.contains(&last) {
                    acc.proto = last;
                }
            }
            (Some(attempt), None)
        }
    }
}

/// Read a handshake request (bounded in size); returns it and whatever the
/// client sent after it.
async fn read_request(stream: &mut ChargerStream) -> Result<(Request, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match Request::try_parse(&buf) {
            Ok(Some((len, req))) => return Ok((req, buf.split_off(len))),
            Ok(None) if buf.len() < MAX_REQUEST => {}
            Ok(None) => return Err(format!("handshake request longer than {MAX_REQUEST} bytes")),
            Err(e) => return Err(format!("bad handshake request: {e}")),
        }
    }
}

/// Answer a refused handshake with its HTTP status and reason (and the
/// Basic auth challenge where credentials are missing or wrong).
async fn write_refusal(
    stream: &mut ChargerStream,
    status: StatusCode,
    reason: &str,
) -> std::io::Result<()> {
    let body = format!("{reason}\n");
    let challenge = if status == StatusCode::UNAUTHORIZED {
        "WWW-Authenticate: Basic realm=\"chargegate\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status}\r\n{challenge}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(CLOUD_WAIT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::basic_auth;

    fn check_request_plain(req: &Request, cfg: &Config) -> Result<Accepted, Refusal> {
        check_request(req, cfg, &Transport::default())
    }

    fn cfg(allow_unknown: bool) -> Config {
        let text = format!(
            "[ocpp]\nallow_unknown_chargers = {allow_unknown}\n[[charger]]\nid = \"CP-1\"\npassword = \"secret-secret-16\"\n[[charger]]\nid = \"CPé2\"\n"
        );
        Config::parse(&text, "t.toml").unwrap()
    }

    fn req(path: &str, proto: Option<&str>, auth: Option<&str>) -> Request {
        let mut b = Request::builder().uri(path);
        if let Some(p) = proto {
            b = b.header("Sec-WebSocket-Protocol", p);
        }
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hashed_passwords_and_security_profiles() {
        let hashed = crate::password::hash("hashed-secret-123").unwrap();
        let text = format!(
            "[[charger]]\nid = \"CP-H\"\npassword = \"{hashed}\"\n[[charger]]\nid = \"CP-W\"\npassword = \"weak\"\n"
        );
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].key, "charger[1].password");
        let c = Config::parse(
            &text.replace("\"weak\"", "\"strong-enough-pass\""),
            "t.toml",
        )
        .unwrap();
        let good = basic_auth("CP-H", "hashed-secret-123");
        assert!(check_request_plain(&req("/ocpp/CP-H", Some("ocpp1.6"), Some(&good)), &c).is_ok());
        let bad = basic_auth("CP-H", "hashed-secret-124");
        let r =
            check_request_plain(&req("/ocpp/CP-H", Some("ocpp1.6"), Some(&bad)), &c).unwrap_err();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        // Profiles 2 and 3 need the wss:// listener.
        let e = Config::parse(
            "[[charger]]\nid = \"CP-2\"\nsecurity_profile = 2\n",
            "t.toml",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["charger[0].security_profile", "charger[0].security_profile"],
            "{e}"
        );
    }

    #[test]
    fn known_charger_with_password() {
        let c = cfg(false);
        let good = basic_auth("CP-1", "secret-secret-16");
        let acc =
            check_request_plain(&req("/ocpp/CP-1", Some("ocpp1.6"), Some(&good)), &c).unwrap();
        assert_eq!((acc.id.as_str(), acc.proto), ("CP-1", Protocol::Ocpp16));
        let r = check_request_plain(
            &req(
                "/ocpp/CP-1",
                Some("ocpp1.6"),
                Some(&basic_auth("CP-1", "wrong")),
            ),
            &c,
        )
        .unwrap_err();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.known_id.as_deref(), Some("CP-1"));
        let r = check_request_plain(
            &req(
                "/ocpp/CP-1",
                Some("ocpp1.6"),
                Some(&basic_auth("CP-2", "secret-secret-16")),
            ),
            &c,
        )
        .unwrap_err();
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "user must be the charge point id"
        );
        let r = check_request_plain(&req("/ocpp/CP-1", Some("ocpp1.6"), None), &c).unwrap_err();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn ids_are_percent_decoded_and_unknown_ones_refused() {
        let c = cfg(false);
        assert_eq!(
            check_request_plain(&req("/ocpp/CP%C3%A92", Some("ocpp1.6"), None), &c)
                .unwrap()
                .id,
            "CPé2"
        );
        let r = check_request_plain(&req("/ocpp/CP-9", Some("ocpp1.6"), None), &c).unwrap_err();
        assert_eq!((r.status, r.known_id), (StatusCode::NOT_FOUND, None));
        assert!(check_request_plain(&req("/ocpp/CP-9", Some("ocpp1.6"), None), &cfg(true)).is_ok());
        assert_eq!(
            check_request_plain(&req("/other/CP-1", Some("ocpp1.6"), None), &c)
                .unwrap_err()
                .status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            check_request_plain(&req("/ocpp/a%2Fb", Some("ocpp1.6"), None), &cfg(true))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            check_request_plain(&req("/ocpp/", Some("ocpp1.6"), None), &cfg(true))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn subprotocol_is_required() {
        let c = cfg(true);
        let r = check_request_plain(&req("/ocpp/X", Some("ocpp1.5"), None), &c).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.reason.contains("ocpp1.6"));
        assert_eq!(
            check_request_plain(&req("/ocpp/X", Some("ocpp2.0.1"), None), &c)
                .unwrap()
                .proto,
            Protocol::Ocpp201
        );
    }
}
