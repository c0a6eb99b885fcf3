//! The reverse proxy in front of service VMs: HTTP and HTTPS listeners
//! (HTTP/1.1 and HTTP/2, TLS by SNI), routing by host name to the VM whose
//! spec claims it, forwarding headers, redirects to HTTPS, gzip and zstd
//! compression, WebSocket upgrades, and plain pages for what went wrong.

pub mod limits;
mod listen;
mod routes;
pub mod tls;

use crate::manager::Manager;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub use listen::start;
pub use routes::{host_name, RouteTable};

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
    /// Proxies in front of this one whose `X-Forwarded-For` chain is kept
    /// (and extended) and whose `Forwarded`-style headers pass; from anyone
    /// else they are replaced or dropped.
    pub trusted_proxies: Vec<IpAddr>,
    pub limits: limits::Limits,
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

/// Headers through which a client could claim another address, scheme or
/// path; from anyone but a trusted proxy they are dropped.
const SPOOFABLE: &[&str] = &[
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-original-forwarded-for",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
];

/// Set the forwarding headers on a request going to a VM. A client's own
/// `X-Forwarded-For` is kept (and extended) only when the client is a
/// trusted proxy; from a stranger it would let them pose as any address.
pub fn forwarding_headers(
    h: &mut HeaderMap,
    client: SocketAddr,
    trusted: bool,
    proto: &str,
    host: &str,
) {
    let ip = client.ip().to_canonical().to_string();
    if !trusted {
        // Other names for the same claims, which apps also read.
        for name in SPOOFABLE {
            h.remove(*name);
        }
    }
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if trusted && !prev.is_empty() => format!("{prev}, {ip}"),
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

/// One client connection's context.
struct Ctx {
    m: Arc<Manager>,
    client: SocketAddr,
    /// Whether `client` is a trusted proxy.
    trusted: bool,
    tls: bool,
    https_port: Option<u16>,
    limits: Arc<limits::Limits>,
    activity: Arc<limits::Activity>,
    /// The connection's place under the caps, also held by a WebSocket
    /// tunnel that outlives the HTTP connection.
    permit: Arc<limits::ConnPermit>,
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let _running = ctx.activity.request();
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
    // In use until the response's body has gone (or its tunnel closed).
    let in_use = ctx.m.in_use(&r.vm);
    // The route table may be older than a sleep that just began: a VM
    // that sleeps is always asked.
    let awake = if r.running && !r.sleeps {
        Ok(true)
    } else {
        ctx.m
            .wake_on_demand(&r.vm)
            .await
            .map(|rec| rec.state == crate::store::VmState::Running)
    };
    match awake {
        Ok(true) => {}
        Ok(false) => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                &format!("VM {} is not running.", r.vm),
            )
        }
        Err(e) => {
            tracing::warn!(vm = %r.vm, error = %crate::support::error_chain(&e), "cannot wake a VM for a request");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                &format!("VM {} is asleep and could not be woken.", r.vm),
            );
        }
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
        ctx.trusted,
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
            let (activity, permit) = (ctx.activity.clone(), ctx.permit.clone());
            let idle = ctx.limits.tunnel_idle;
            tokio::spawn(async move {
                let (_permit, _in_use) = (permit, in_use);
                if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
                        // The client side is the tracked stream underneath.
                        () = activity.quiet_longer_than(idle) => {}
                    }
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
    let body = body.map_frame(move |frame| {
        let _held = &in_use;
        frame
    });
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
            true,
            "https",
            "app.test",
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.7");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.test");
    }

    #[test]
    fn a_stranger_cannot_choose_its_forwarded_address() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        h.insert("true-client-ip", HeaderValue::from_static("10.0.0.1"));
        forwarding_headers(
            &mut h,
            "[::ffff:192.0.2.7]:5555".parse().expect("addr"),
            false,
            "http",
            "app.test",
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("forwarded") && !h.contains_key("true-client-ip"));
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
