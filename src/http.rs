//! The gateway's HTTP listeners (the local API and the diagnostics upload
//! listener) served with bounds: connections capped in all and per
//! address, request headers within a timeout, idle connections closed.
//! What a peer can hold open is bounded, so the OCPP listener's file
//! descriptors stay free.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

use crate::limits::Connections;

/// The bounds of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections open at once, in all and from one address.
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
}

/// Serve `app` on `listener` within `bounds` until `shutdown`. Handlers see
/// the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    bounds: Bounds,
    what: &'static str,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let conns = Connections::default();
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    log::error!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let place = match conns.admit(peer.ip(), bounds.max_connections, bounds.max_per_address) {
            Ok(p) => p,
            Err(why) => {
                if conns
                    .report_refusal(peer.ip(), &why.to_string(), None, std::time::Instant::now())
                    .is_some()
                {
                    log::warn!(
                        "{what}: refused {peer}: {why} (reported once a minute per address)"
                    );
                }
                continue; // dropped: closed before it costs anything
            }
        };
        let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _place = place;
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

/// The peer's address, for handlers behind [`serve`].
pub type Peer = ConnectInfo<SocketAddr>;
