//! The cloud side: opens one WebSocket per charger to
//! `{upstream.url}/{chargePointId}` with the charger's subprotocol and
//! credentials, over ws:// or wss:// with real certificate checks (system
//! roots plus an optional configured CA). Also the jittered exponential
//! backoff every reconnect uses.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::UpstreamConfig;
use crate::ocpp::Protocol;

/// A connected upstream WebSocket.
pub type UpStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Characters kept as-is in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Errors setting up the cloud side.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot read CA file {path}: {why}")]
    CaFile { path: String, why: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// Opens upstream connections; shared by all sessions.
pub struct Connector {
    cfg: UpstreamConfig,
    tls: Arc<rustls::ClientConfig>,
    /// Chargers that present their own client certificate to the cloud.
    per_charger: std::collections::HashMap<String, Arc<rustls::ClientConfig>>,
    ws: WebSocketConfig,
}

impl Connector {
    /// Load the trust roots once, at start.
    pub fn new(
        cfg: &UpstreamConfig,
        ws: WebSocketConfig,
        chargers: &std::collections::BTreeMap<String, crate::config::ChargerConfig>,
    ) -> Result<Connector, UpstreamError> {
        let peer = cfg.url.starts_with("wss://").then_some("the cloud");
        let tls = client_tls(cfg.ca_file.as_deref(), peer, None)?;
        let mut per_charger = std::collections::HashMap::new();
        for c in chargers.values() {
            if let Some((cert, key)) = &c.upstream_identity {
                let t = client_tls(cfg.ca_file.as_deref(), peer, Some((cert, key)))?;
                per_charger.insert(c.id.clone(), t);
            }
        }
        Ok(Connector {
            cfg: cfg.clone(),
            tls,
            per_charger,
            ws,
        })
    }
}

/// A TLS client config (TLS 1.2 and 1.3, ring): the system roots plus
/// `ca_file`. `peer` names what it is for, to warn when there are no roots.
pub fn client_tls(
    ca_file: Option<&std::path::Path>,
    peer: Option<&str>,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let (0, None, Some(peer)) = (added, ca_file, peer) {
        log::warn!(
            "no system CA certificates found; TLS to {peer} will fail (install ca-certificates)"
        );
    }
    if let Some(path) = ca_file {
        let ca_err = |why: String| UpstreamError::CaFile {
            path: path.display().to_string(),
            why,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificates in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| UpstreamError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let tls = match identity {
        None => tls.with_no_client_auth(),
        Some((cert, key)) => {
            let file_err = |p: &std::path::Path, e: String| UpstreamError::CaFile {
                path: p.display().to_string(),
                why: e,
            };
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err(cert, e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(cert, e.to_string()))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_err(key, e.to_string()))?;
            tls.with_client_auth_cert(chain, key)
                .map_err(|e| UpstreamError::Tls(e.to_string()))?
        }
    };
    Ok(Arc::new(tls))
}

impl Connector {
    /// The URL a charger's upstream connection goes to.
    pub fn url_for(&self, charger_id: &str) -> String {
        format!(
            "{}/{}",
            self.cfg.url,
            utf8_percent_encode(charger_id, SEGMENT)
        )
    }

    /// Open the upstream connection for one charger, offering the cloud the
    /// protocols the charger offered, in its order; returns the socket and
    /// the protocol the cloud chose. `authorization` is the full
    /// `Authorization` header value to present, if any.
    pub async fn connect(
        &self,
        charger_id: &str,
        offered: &[Protocol],
        authorization: Option<&str>,
    ) -> Result<(UpStream, Protocol), ConnectError> {
        let url = self.url_for(charger_id);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::BadUrl {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        let h = req.headers_mut();
        let offer = Protocol::header(offered);
        h.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&offer).map_err(|e| ConnectError::Other {
                url: url.clone(),
                detail: e.to_string(),
            })?,
        );
        if let Some(a) = authorization {
            h.insert(
                "Authorization",
                HeaderValue::from_str(a).map_err(|_| ConnectError::BadAuthorization)?,
            );
        }
        let tls = self
            .per_charger
            .get(charger_id)
            .unwrap_or(&self.tls)
            .clone();
        let connector = tokio_tungstenite::Connector::Rustls(tls);
        let fut = tokio_tungstenite::connect_async_tls_with_config(
            req,
            Some(self.ws),
            true,
            Some(connector),
        );
        let (ws, resp) = tokio::time::timeout(self.cfg.connect_timeout, fut)
            .await
            .map_err(|_| ConnectError::Timeout {
                url: url.clone(),
                after: self.cfg.connect_timeout,
            })?
            .map_err(|e| describe(&url, e))?;
        let agreed = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        match agreed.and_then(Protocol::parse) {
            Some(p) if offered.contains(&p) => Ok((ws, p)),
            _ => Err(ConnectError::Subprotocol {
                offered: offer,
                answered: agreed.map(str::to_string),
            }),
        }
    }

    /// Backoff for reconnects, from the config.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max)
    }
}

/// Why a connection to the cloud failed. Cloned and compared so that the
/// same failure is journaled once, not at every retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("bad upstream URL {url}: {detail}")]
    BadUrl { url: String, detail: String },
    #[error("invalid Authorization header")]
    BadAuthorization,
    #[error("no answer from {url} within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("cloud refused {url}: HTTP {status}")]
    Refused { url: String, status: u16 },
    /// The cloud's certificate is not trusted: someone has to act, it is
    /// no network hiccup. The text keeps its `CERTIFICATE:` mark for the
    /// journal's readers.
    #[error("CERTIFICATE: TLS to {url} failed: {detail}")]
    Certificate { url: String, detail: String },
    #[error("TLS to {url} failed: {detail}")]
    Tls { url: String, detail: String },
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("cloud did not agree to a subprotocol offered ({offered}; answered {answered:?})")]
    Subprotocol {
        offered: String,
        answered: Option<String>,
    },
    #[error("{url}: {detail}")]
    Other { url: String, detail: String },
    /// The task that connected died (it panicked or was cancelled).
    #[error("connect task failed: {0}")]
    Task(String),
}

fn describe(url: &str, e: tokio_tungstenite::tungstenite::Error) -> ConnectError {
    use tokio_tungstenite::tungstenite::Error as E;
    let url = url.to_string();
    match e {
        E::Http(resp) => ConnectError::Refused {
            url,
            status: resp.status().as_u16(),
        },
        E::Tls(t) => ConnectError::Tls {
            url,
            detail: t.to_string(),
        },
        // rustls reports an untrusted certificate as an I/O error whose
        // inner error is a `rustls::Error`.
        E::Io(io) if is_certificate_error(&io) => ConnectError::Certificate {
            url,
            detail: io.to_string(),
        },
        E::Io(io) => ConnectError::Unreachable {
            url,
            detail: io.to_string(),
        },
        other => ConnectError::Other {
            url,
            detail: other.to_string(),
        },
    }
}

fn is_certificate_error(io: &std::io::Error) -> bool {
    match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(e) => matches!(
            e,
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
        ),
        None => false,
    }
}

/// `Basic` authorization header value for a charge point id and password.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Jittered exponential backoff: each delay is drawn from the upper half of
/// a window that doubles up to `max`, so a site full of chargers does not
/// reconnect in lockstep after an outage.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let window = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = window / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(500) && d[0] <= Duration::from_secs(1));
        assert!(d[3] >= Duration::from_secs(4) && d[3] <= Duration::from_secs(8));
        assert!(d[5] <= Duration::from_secs(8));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn charger_ids_are_percent_encoded_in_the_url() {
        let cfg = UpstreamConfig {
            url: "ws://cloud/ocpp".into(),
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(2),
        };
        let c = Connector::new(&cfg, WebSocketConfig::default(), &Default::default()).unwrap();
        assert_eq!(c.url_for("CP 1#x"), "ws://cloud/ocpp/CP%201%23x");
        assert_eq!(c.url_for("CP-1"), "ws://cloud/ocpp/CP-1");
    }

    #[test]
    fn basic_auth_is_rfc7617() {
        assert_eq!(basic_auth("CP1", "pw"), "Basic Q1AxOnB3");
    }
}
