//! Port forwards to a VM on a managed network: the daemon listens on the
//! host address and port and relays to the guest's address (TCP streams and
//! UDP datagrams). A relay in the daemon, rather than a DNAT rule, also
//! works for loopback addresses, and goes away with the VM.

use skiff_spec::{PortForward, Protocol};
pub use skiff_vmm::usernet::PortInUse;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// A UDP peer with no traffic for this long loses its relay socket.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// The relays of one VM; dropping it stops them.
#[derive(Default)]
pub struct Forwarder {
    tasks: Vec<JoinHandle<()>>,
    /// The host addresses bound, in the order of the forwards (a port 0
    /// becomes the one the system chose).
    bound: Vec<SocketAddr>,
}

impl Forwarder {
    pub fn bound(&self) -> &[SocketAddr] {
        &self.bound
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Bind every host port now (a taken port is an error before the VM boots)
/// and relay to `guest`. Must run inside the tokio runtime.
pub fn start(forwards: &[PortForward], guest: Ipv4Addr) -> Result<Forwarder, PortInUse> {
    let mut fw = Forwarder::default();
    for f in forwards {
        let host = SocketAddr::new(f.host_address, f.host_port);
        let target = SocketAddr::from((guest, f.guest_port));
        let err = |source| PortInUse {
            addr: host,
            proto: proto_name(f.protocol),
            source,
        };
        let task = match f.protocol {
            Protocol::Tcp => {
                let std = std::net::TcpListener::bind(host).map_err(err)?;
                std.set_nonblocking(true).map_err(err)?;
                fw.bound.push(std.local_addr().map_err(err)?);
                let listener = TcpListener::from_std(std).map_err(err)?;
                tokio::spawn(relay_tcp(listener, target))
            }
            Protocol::Udp => {
                let std = std::net::UdpSocket::bind(host).map_err(err)?;
                std.set_nonblocking(true).map_err(err)?;
                fw.bound.push(std.local_addr().map_err(err)?);
                let socket = UdpSocket::from_std(std).map_err(err)?;
                tokio::spawn(relay_udp(Arc::new(socket), target))
            }
        };
        fw.tasks.push(task);
    }
    Ok(fw)
}

/// Connections one TCP forward holds at once, and from one address: each
/// costs the daemon two descriptors.
const TCP_MAX_CONNECTIONS: usize = 1024;
const TCP_MAX_PER_IP: usize = 128;

async fn relay_tcp(listener: TcpListener, target: SocketAddr) {
    let limiter = crate::proxy::limits::ConnLimiter::new(&crate::proxy::limits::Limits {
        max_connections: TCP_MAX_CONNECTIONS,
        max_per_ip: TCP_MAX_PER_IP,
        ..Default::default()
    });
    loop {
        let Ok((mut client, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(permit) = limiter.admit(from.ip()) else {
            continue; // over a cap: dropped, the client sees it close
        };
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(mut guest)) =
                tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target)).await
            else {
                return; // the client sees the connection close
            };
            let _ = client.set_nodelay(true);
            let _ = guest.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut guest).await;
        });
    }
}

/// UDP sources one forward relays for at once. Sources are easy to spoof,
/// so the table is bounded: a new source past the bound takes the place of
/// the one quiet the longest.
const UDP_MAX_PEERS: usize = 256;

/// One UDP source's relay socket and its reply task.
struct Peer {
    upstream: Arc<UdpSocket>,
    /// Milliseconds after the relay's start when either side last sent.
    last_ms: Arc<AtomicU64>,
    replies: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

fn millis_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn relay_udp(host: Arc<UdpSocket>, target: SocketAddr) {
    let base = Instant::now();
    let mut peers: HashMap<SocketAddr, Peer> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = host.recv_from(&mut buf).await else {
            continue;
        };
        // A source whose reply task ended (quiet too long, or the guest
        // refused) gets a fresh relay, so its answers are read again.
        if peers.get(&from).is_some_and(|p| p.replies.is_finished()) {
            peers.remove(&from);
        }
        if !peers.contains_key(&from) {
            if peers.len() >= UDP_MAX_PEERS {
                peers.retain(|_, p| !p.replies.is_finished());
            }
            if peers.len() >= UDP_MAX_PEERS {
                let quietest = peers
                    .iter()
                    .min_by_key(|(_, p)| p.last_ms.load(Ordering::Relaxed))
                    .map(|(addr, _)| *addr);
                if let Some(addr) = quietest {
                    peers.remove(&addr);
                }
            }
            let Ok(upstream) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
                continue;
            };
            if upstream.connect(target).await.is_err() {
                continue;
            }
            let upstream = Arc::new(upstream);
            let last_ms = Arc::new(AtomicU64::new(millis_since(base)));
            let replies = tokio::spawn(udp_replies(
                upstream.clone(),
                host.clone(),
                from,
                base,
                last_ms.clone(),
            ));
            peers.insert(
                from,
                Peer {
                    upstream,
                    last_ms,
                    replies,
                },
            );
        }
        if let Some(peer) = peers.get(&from) {
            peer.last_ms.store(millis_since(base), Ordering::Relaxed);
            let _ = peer.upstream.send(&buf[..n]).await;
        }
    }
}

/// Send the guest's answers back to `peer` until neither side has sent for
/// [`UDP_IDLE`].
async fn udp_replies(
    upstream: Arc<UdpSocket>,
    host: Arc<UdpSocket>,
    peer: SocketAddr,
    base: Instant,
    last_ms: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                last_ms.store(millis_since(base), Ordering::Relaxed);
                let _ = host.send_to(&buf[..n], peer).await;
            }
            // ECONNREFUSED: the guest's service was not listening yet; the
            // next datagram may find it.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Ok(Err(_)) => return,
            Err(_) => {
                let quiet = millis_since(base).saturating_sub(last_ms.load(Ordering::Relaxed));
                if quiet >= UDP_IDLE.as_millis() as u64 {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn fwd(host_port: u16, guest_port: u16, protocol: Protocol) -> PortForward {
        PortForward {
            host_address: "127.0.0.1".parse().expect("ip"),
            host_port,
            guest_port,
            protocol,
        }
    }

    #[tokio::test]
    async fn tcp_and_udp_are_relayed_and_a_taken_port_is_an_error() {
        // "Guest" servers on loopback stand in for the VM's address.
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_port = echo.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut b = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let udp_echo = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let udp_port = udp_echo.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut b = vec![0u8; 2048];
            while let Ok((n, p)) = udp_echo.recv_from(&mut b).await {
                let _ = udp_echo.send_to(&b[..n], p).await;
            }
        });
        // Port 0: the system picks free ports, the forwarder says which.
        let fw = start(
            &[
                fwd(0, echo_port, Protocol::Tcp),
                fwd(0, udp_port, Protocol::Udp),
            ],
            Ipv4Addr::LOCALHOST,
        )
        .expect("forwards");
        let (tcp_host, udp_host) = (fw.bound()[0].port(), fw.bound()[1].port());
        let mut c = TcpStream::connect(("127.0.0.1", tcp_host))
            .await
            .expect("connect");
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = c.split();
        let sent = payload.clone();
        let (_, got) = tokio::join!(async move { w.write_all(&sent).await }, async move {
            let mut got = vec![0u8; 100_000];
            r.read_exact(&mut got).await.map(|_| got)
        });
        assert_eq!(got.expect("echo"), payload);
        let u = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        u.send_to(b"ping", ("127.0.0.1", udp_host))
            .await
            .expect("send");
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), u.recv(&mut b))
            .await
            .expect("udp answer in time")
            .expect("recv");
        assert_eq!(&b[..n], b"ping");

        let taken = start(&[fwd(tcp_host, 80, Protocol::Tcp)], Ipv4Addr::LOCALHOST);
        let e = taken.err().expect("port in use");
        let e = crate::support::error_chain(&e);
        assert!(
            e.contains(&format!(
                "cannot forward host port 127.0.0.1:{tcp_host}/tcp"
            )),
            "{e}"
        );
        drop(fw);
        // The relays are aborted, not joined: their listener closes soon.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", tcp_host)).await.is_ok() {
            assert!(Instant::now() < deadline, "the forward still answers");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").expect("fds").count()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn spoofed_udp_sources_cannot_grow_the_relay_without_bound() {
        let sink = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let sink_port = sink.local_addr().expect("addr").port();
        let fw = start(&[fwd(0, sink_port, Protocol::Udp)], Ipv4Addr::LOCALHOST).expect("forward");
        let host_port = fw.bound()[0].port();
        // 400 sources (a spoofer's worth of addresses, on a small scale).
        let mut sources = Vec::new();
        for _ in 0..400 {
            sources.push(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        }
        let before = open_fds();
        // Every source's datagram reaches the guest...
        let mut b = [0u8; 8];
        for s in &sources {
            s.send_to(b"x", ("127.0.0.1", host_port))
                .await
                .expect("send");
            tokio::time::timeout(Duration::from_secs(5), sink.recv_from(&mut b))
                .await
                .expect("relayed in time")
                .expect("recv");
        }
        // ...but the relay holds one socket per source only up to its bound.
        let grown = open_fds() - before;
        assert!(
            grown <= UDP_MAX_PEERS + 8,
            "{grown} descriptors for 400 sources"
        );
        assert!(grown >= UDP_MAX_PEERS / 2, "relayed without peers? {grown}");
    }
}
