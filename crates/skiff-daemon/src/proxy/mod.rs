//! The reverse proxy in front of service VMs: HTTP and HTTPS listeners
//! (HTTP/1.1 and HTTP/2, TLS by SNI), routing by host name to the VM whose
//! spec claims it, forwarding headers, redirects to HTTPS, gzip and zstd
//! compression, WebSocket upgrades, and plain pages for what went wrong.

mod routes;
pub mod tls;

use crate::manager::Manager;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

pub use routes::host_name;

/// Requests with a larger declared body are refused (413).
pub const MAX_BODY: u64 = 64 * 1024 * 1024;
/// How long the VM may take to start answering a request.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

/// A page for a request the proxy answers itself.
fn page(status: StatusCode, title: &str, detail: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html><head><title>{code} {title}</title></head><body><h1>{code} {title}</h1><p>{detail}</p><hr><p>skiff</p></body></html>\n",
        code = status.as_u16(),
        title = escape(title),
        detail = escape(detail),
    );
    let mut r = Response::new(Full::new(Bytes::from(html)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(listed) {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            h.remove(n);
        }
    }
}

fn is_websocket(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Set the forwarding headers on a request going to a VM.
pub fn forwarding_headers(h: &mut HeaderMap, client: SocketAddr, proto: &str, host: &str) {
    let ip = client.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip.clone(),
    };
    for (k, v) in [
        ("x-forwarded-for", xff.as_str()),
        ("x-real-ip", ip.as_str()),
        ("x-forwarded-proto", proto),
        ("x-forwarded-host", host),
    ] {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(k), v);
        }
    }
}

struct Ctx {
    m: Arc<Manager>,
    client: SocketAddr,
    tls: bool,
    https_port: Option<u16>,
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let start = Instant::now();
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .map(|h| host_name(&h))
        .unwrap_or_default();
    let route = ctx.m.route_for(&host);
    let (vm, resp) = match route {
        None => (
            String::new(),
            page(
                StatusCode::NOT_FOUND,
                "Not Found",
                &format!("No site is configured for {host:?} here."),
            ),
        ),
        Some(r) => {
            let resp = forward(&ctx, req, &host, &r).await;
            (r.vm, resp)
        }
    };
    ctx.m
        .metrics
        .proxied(&vm, resp.status().as_u16(), start.elapsed());
    Ok(resp)
}

async fn forward(
    ctx: &Ctx,
    mut req: Request<Incoming>,
    host: &str,
    r: &routes::Route,
) -> Response<Body> {
    let wants_tls = !matches!(r.tls, skiff_spec::TlsSpec::None);
    if wants_tls && !ctx.tls {
        if let Some(port) = ctx.https_port {
            let authority = if port == 443 {
                host.to_owned()
            } else {
                format!("{host}:{port}")
            };
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut resp = page(
                StatusCode::PERMANENT_REDIRECT,
                "Permanent Redirect",
                "This site is served over HTTPS.",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return resp;
        }
    }
    if !r.running {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            &format!("VM {} is not running.", r.vm),
        );
    }
    if ctx.m.is_unhealthy(&r.vm) {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            &format!("VM {} is failing its health check.", r.vm),
        );
    }
    let too_big = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY);
    if too_big {
        return page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            &format!("Requests are limited to {} MiB.", MAX_BODY >> 20),
        );
    }
    let Some(addr) = r.address else {
        return page(
            StatusCode::BAD_GATEWAY,
            "Bad Gateway",
            &format!("VM {} has no address.", r.vm),
        );
    };
    let target = SocketAddr::from((addr, r.port));
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return page(
                StatusCode::BAD_GATEWAY,
                "Bad Gateway",
                &format!("VM {} does not answer on {target}: {e}.", r.vm),
            )
        }
        Err(_) => {
            return page(
                StatusCode::BAD_GATEWAY,
                "Bad Gateway",
                &format!(
                    "VM {} did not accept a connection on {target} in time.",
                    r.vm
                ),
            )
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(v) => v,
        Err(e) => {
            return page(
                StatusCode::BAD_GATEWAY,
                "Bad Gateway",
                &format!("VM {}: {e}.", r.vm),
            )
        }
    };
    tokio::spawn(conn.with_upgrades());

    let websocket = is_websocket(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let (true, Some(v)) = (websocket, upgrade_value) {
        parts.headers.insert(header::UPGRADE, v);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    forwarding_headers(
        &mut parts.headers,
        ctx.client,
        if ctx.tls { "https" } else { "http" },
        host,
    );
    if let Ok(v) = HeaderValue::from_str(host) {
        parts.headers.insert(header::HOST, v);
    }
    // HTTP/1.1 to the VM whatever the client spoke.
    parts.version = hyper::Version::HTTP_11;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(_) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                "The request path is not valid.",
            )
        }
    };
    // Bodies without a declared length are cut off at the same limit.
    let body = http_body_util::Limited::new(body, MAX_BODY as usize);
    let upstream_req = Request::from_parts(parts, body);
    let mut resp =
        match tokio::time::timeout(UPSTREAM_TIMEOUT, sender.send_request(upstream_req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if error_chain_mentions(&e, "length limit exceeded") => {
                return page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Payload Too Large",
                    &format!("Requests are limited to {} MiB.", MAX_BODY >> 20),
                )
            }
            Ok(Err(e)) => {
                return page(
                    StatusCode::BAD_GATEWAY,
                    "Bad Gateway",
                    &format!("VM {} broke off the request: {e}.", r.vm),
                )
            }
            Err(_) => {
                return page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Gateway Timeout",
                    &format!(
                        "VM {} did not answer within {} s.",
                        r.vm,
                        UPSTREAM_TIMEOUT.as_secs()
                    ),
                )
            }
        };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u))
                            .await;
                }
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(
                parts,
                http_body_util::Empty::new().map_err(|e| match e {}).boxed(),
            );
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed())
}

fn error_chain_mentions(e: &(dyn std::error::Error + 'static), text: &str) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains(text) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Serve one accepted connection (plain or TLS) with HTTP/1.1 and HTTP/2.
async fn serve_conn<IO>(io: IO, ctx: Arc<Ctx>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = tower::ServiceBuilder::new()
        .layer(
            tower_http::compression::CompressionLayer::new()
                .gzip(true)
                .zstd(true),
        )
        .service(tower::service_fn(move |req: Request<Incoming>| {
            handle(ctx.clone(), req)
        }));
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

/// Bind the listeners (an error names the address), then serve for ever.
pub async fn start(m: Arc<Manager>, cfg: ProxyConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let bind = |a: SocketAddr| async move {
        TcpListener::bind(a).await.with_context(|| {
            format!("the proxy cannot listen on {a} (in use, or a port below 1024 without root)")
        })
    };
    let https_port = cfg.https.map(|a| a.port());
    if let Some(addr) = cfg.http {
        let l = bind(addr).await?;
        let m = m.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, client)) = l.accept().await else {
                    continue;
                };
                let ctx = Arc::new(Ctx {
                    m: m.clone(),
                    client,
                    tls: false,
                    https_port,
                });
                tokio::spawn(serve_conn(s, ctx));
            }
        });
        tracing::info!(%addr, "proxy listening on http");
    }
    if let Some(addr) = cfg.https {
        let l = bind(addr).await?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&m)));
        tokio::spawn(async move {
            loop {
                let Ok((s, client)) = l.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let ctx = Arc::new(Ctx {
                    m: m.clone(),
                    client,
                    tls: true,
                    https_port,
                });
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(s)).await
                    {
                        serve_conn(tls, ctx).await;
                    }
                });
            }
        });
        tracing::info!(%addr, "proxy listening on https");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_append_to_a_chain_and_name_the_scheme() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        forwarding_headers(
            &mut h,
            "192.0.2.7:5555".parse().expect("addr"),
            "https",
            "app.test",
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.7");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.test");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn error_pages_escape_what_they_quote() {
        let p = page(
            StatusCode::NOT_FOUND,
            "Not Found",
            "no site for \"<script>\"",
        );
        assert_eq!(p.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            p.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
    }
}
