//! Port forwards to a VM on a managed network: the daemon listens on the
//! host address and port and relays to the guest's address (TCP streams and
//! UDP datagrams). A relay in the daemon, rather than a DNAT rule, also
//! works for loopback addresses, and goes away with the VM.

use skiff_spec::{PortForward, Protocol};
pub use skiff_vmm::usernet::PortInUse;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// A UDP peer with no traffic for this long loses its relay socket.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// The relays of one VM; dropping it stops them.
#[derive(Default)]
pub struct Forwarder {
    tasks: Vec<JoinHandle<()>>,
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
                let listener = TcpListener::from_std(std).map_err(err)?;
                tokio::spawn(relay_tcp(listener, target))
            }
            Protocol::Udp => {
                let std = std::net::UdpSocket::bind(host).map_err(err)?;
                std.set_nonblocking(true).map_err(err)?;
                let socket = UdpSocket::from_std(std).map_err(err)?;
                tokio::spawn(relay_udp(Arc::new(socket), target))
            }
        };
        fw.tasks.push(task);
    }
    Ok(fw)
}

async fn relay_tcp(listener: TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
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

async fn relay_udp(host: Arc<UdpSocket>, target: SocketAddr) {
    let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, peer)) = host.recv_from(&mut buf).await else {
            continue;
        };
        peers.retain(|_, s| Arc::strong_count(s) > 1);
        let upstream = match peers.get(&peer) {
            Some(s) => s.clone(),
            None => {
                let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
                    continue;
                };
                if s.connect(target).await.is_err() {
                    continue;
                }
                let s = Arc::new(s);
                peers.insert(peer, s.clone());
                tokio::spawn(udp_replies(s.clone(), host.clone(), peer));
                s
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

/// Send the guest's answers back to `peer` until it has been idle a while.
async fn udp_replies(upstream: Arc<UdpSocket>, host: Arc<UdpSocket>, peer: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
        let _ = host.send_to(&buf[..n], peer).await;
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

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
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
        let (tcp_host, udp_host) = (free_port(), free_port());
        let fw = start(
            &[
                fwd(tcp_host, echo_port, Protocol::Tcp),
                fwd(udp_host, udp_port, Protocol::Udp),
            ],
            Ipv4Addr::LOCALHOST,
        )
        .expect("forwards");
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
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            TcpStream::connect(("127.0.0.1", tcp_host)).await.is_err(),
            "stopped"
        );
    }
}
