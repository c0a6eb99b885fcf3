//! The proxy's listeners: accept under the connection caps, hand each
//! connection to hyper with a header-read timer, and close it when it
//! outstays [`Limits`].

use super::limits::{Activity, ConnLimiter, Limits, Tracked};
use super::{handle, tls, Ctx, ProxyConfig};
use crate::manager::Manager;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Where the proxy listens, once bound (a port 0 in the configuration is
/// resolved here).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bound {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

/// How often a connection's watchdog looks at it.
fn tick(limits: &Limits) -> Duration {
    (limits.header_read.min(limits.idle) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// Serve one accepted connection (plain or TLS) with HTTP/1.1 and HTTP/2.
async fn serve_conn<IO>(io: IO, ctx: Arc<Ctx>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = ctx.limits.clone();
    let activity = ctx.activity.clone();
    let handler_ctx = ctx.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(
            tower_http::compression::CompressionLayer::new()
                .gzip(true)
                .zstd(true),
        )
        .service(tower::service_fn(move |req: Request<Incoming>| {
            handle(handler_ctx.clone(), req)
        }));
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper's header-read timeout is silently off.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(Tracked::new(io, activity.clone())), svc);
    tokio::pin!(conn);
    // hyper does not time the protocol sniffing of a connection that sends
    // nothing, nor an idle HTTP/2 connection: the watchdog does.
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep(tick(&limits)) => {
                if activity.expired(&limits) {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

/// Accept on `l` for ever; each admitted connection goes to `serve`.
/// Over a cap, the connection is closed at once; an accept error (out of
/// descriptors, say) pauses the loop instead of spinning on it.
fn accept_loop<F, Fut>(l: TcpListener, limiter: Arc<ConnLimiter>, serve: F)
where
    F: Fn(TcpStream, SocketAddr, super::limits::ConnPermit) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (s, client) = match l.accept().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "the proxy cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match limiter.admit(client.ip()) {
                Some(permit) => {
                    tokio::spawn(serve(s, client, permit));
                }
                None => drop(s),
            }
        }
    });
}

/// Bind the listeners (an error names the address), then serve for ever.
pub async fn start(m: Arc<Manager>, cfg: ProxyConfig) -> anyhow::Result<Bound> {
    use anyhow::Context;
    let bind = |a: SocketAddr| async move {
        TcpListener::bind(a).await.with_context(|| {
            format!("the proxy cannot listen on {a} (in use, or a port below 1024 without root)")
        })
    };
    let limits = Arc::new(cfg.limits.clone());
    let limiter = ConnLimiter::new(&limits);
    let trusted = Arc::new(cfg.trusted_proxies.clone());
    let mut bound = Bound::default();
    let https = match cfg.https {
        Some(addr) => {
            let l = bind(addr).await?;
            bound.https = Some(l.local_addr().context("the proxy's https address")?);
            Some(l)
        }
        None => None,
    };
    let https_port = bound.https.map(|a| a.port());
    let context = {
        let (m, limits, trusted) = (m.clone(), limits.clone(), trusted.clone());
        move |client: SocketAddr, tls: bool, permit| {
            Arc::new(Ctx {
                m: m.clone(),
                client,
                trusted: trusted.contains(&client.ip().to_canonical()),
                tls,
                https_port,
                limits: limits.clone(),
                activity: Activity::new(),
                permit: Arc::new(permit),
            })
        }
    };
    if let Some(addr) = cfg.http {
        let l = bind(addr).await?;
        bound.http = Some(l.local_addr().context("the proxy's http address")?);
        let context = context.clone();
        accept_loop(l, limiter.clone(), move |s, client, permit| {
            serve_conn(s, context(client, false, permit))
        });
        tracing::info!(addr = %bound.http.unwrap_or(addr), "proxy listening on http");
    }
    if let Some(l) = https {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&m)));
        let handshake = limits.handshake;
        accept_loop(l, limiter, move |s, client, permit| {
            let acceptor = acceptor.clone();
            let ctx = context(client, true, permit);
            async move {
                if let Ok(Ok(tls)) = tokio::time::timeout(handshake, acceptor.accept(s)).await {
                    serve_conn(tls, ctx).await;
                }
            }
        });
        tracing::info!(addr = ?bound.https, "proxy listening on https");
    }
    Ok(bound)
}

#[cfg(test)]
#[path = "listen_tests.rs"]
mod tests;
