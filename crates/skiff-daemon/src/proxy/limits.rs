//! What a stranger's connection may cost: how long it may take to send its
//! first request and stay idle after, and how many connections one address
//! and everyone together may hold open. Without these, a thousand idle
//! sockets use up the daemon's descriptors and it can no longer serve its
//! API or boot VMs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The proxy's timeouts and caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// From accepting a connection to its first complete request head, and
    /// for every later request head once its first byte arrived.
    pub header_read: Duration,
    /// How long a connection may sit with no request running and no byte
    /// moving before it is closed.
    pub idle: Duration,
    /// How long a TLS handshake may take.
    pub handshake: Duration,
    /// Connections open at once, from everyone.
    pub max_connections: usize,
    /// Connections open at once from one address (one IPv4 address, one
    /// IPv6 /64).
    pub max_per_ip: usize,
    /// How long an upgraded connection (a WebSocket) may carry nothing.
    pub tunnel_idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read: Duration::from_secs(10),
            // Longer than the upstream timeout: a slow VM answer is not idle.
            idle: Duration::from_secs(120),
            handshake: Duration::from_secs(10),
            max_connections: 4096,
            max_per_ip: 256,
            tunnel_idle: Duration::from_secs(3600),
        }
    }
}

/// Counts open connections, in total and per client address.
pub struct ConnLimiter {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnPermit {
    _total: OwnedSemaphorePermit,
    key: IpAddr,
    limiter: Arc<ConnLimiter>,
}

impl ConnLimiter {
    pub fn new(limits: &Limits) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            total: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: limits.max_per_ip,
        })
    }

    /// A place for a connection from `ip`, or `None` when it or everyone
    /// holds too many already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let key = client_key(ip);
        let total = self.total.clone().try_acquire_owned().ok()?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.entry(key).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        Some(ConnPermit {
            _total: total,
            key,
            limiter: self.clone(),
        })
    }

    /// Connections open now from `ip`'s address block.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        per_ip.get(&client_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_ip = self
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.key);
            }
        }
    }
}

/// The address block a client is counted under: its IPv4 address (also
/// when mapped into IPv6), or its IPv6 /64, which one host usually holds
/// whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// What one connection has been doing, for its watchdog.
pub struct Activity {
    born: Instant,
    /// Milliseconds after `born` when a byte last moved.
    last_ms: AtomicU64,
    requests: AtomicU64,
    inflight: AtomicUsize,
}

/// A request being handled; the connection is not idle while it lives.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Mark a request as started; it runs until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inflight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn quiet_for(&self) -> Duration {
        self.born
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Whether the connection has outstayed its welcome: no request yet
    /// within `header_read` of being accepted, or, between requests, no byte
    /// for `idle`.
    pub fn expired(&self, limits: &Limits) -> bool {
        if self.inflight.load(Ordering::SeqCst) > 0 {
            return false;
        }
        if self.requests.load(Ordering::SeqCst) == 0 {
            return self.born.elapsed() > limits.header_read;
        }
        self.quiet_for() > limits.idle
    }

    /// Resolves once nothing has moved for `limit`.
    pub async fn quiet_longer_than(&self, limit: Duration) {
        loop {
            let quiet = self.quiet_for();
            if quiet > limit {
                return;
            }
            tokio::time::sleep(limit - quiet + Duration::from_millis(10)).await;
        }
    }
}

/// A stream that records in its [`Activity`] whenever bytes move.
pub struct Tracked<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> Tracked<IO> {
    pub fn new(io: IO, activity: Arc<Activity>) -> Tracked<IO> {
        Tracked { io, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    // Passed through, so that hyper keeps writing head and body in one
    // writev instead of copying them together first.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_address_block_and_in_total() {
        let limits = Limits {
            max_connections: 5,
            max_per_ip: 2,
            ..Limits::default()
        };
        let lim = ConnLimiter::new(&limits);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let a_mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let first = lim.admit(a).expect("first");
        let _second = lim
            .admit(a_mapped)
            .expect("second, the same address mapped");
        assert!(lim.admit(a).is_none(), "a third from one address");
        drop(first);
        let _again = lim.admit(a).expect("a place freed");

        // One IPv6 /64 counts as one client.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let _p1 = lim.admit(v6a).expect("v6");
        let _p2 = lim.admit(v6b).expect("v6 same /64");
        assert!(lim.admit(v6a).is_none());
        assert_eq!(lim.open_from(v6b), 2);

        // Five in all.
        let _p3 = lim
            .admit("198.51.100.1".parse().expect("ip"))
            .expect("fifth");
        assert!(lim.admit("198.51.100.2".parse().expect("ip")).is_none());
    }
}
