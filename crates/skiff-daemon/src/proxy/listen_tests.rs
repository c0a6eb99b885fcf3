//! The proxy's listener against clients that hold connections open: idle
//! sockets, slow request heads, more connections than one address may have.
//! A real proxy on loopback, real sockets; the routes table is empty, so a
//! request that gets through is answered by the proxy's own 404 page.

use super::*;
use crate::manager::DaemonPaths;
use crate::store::Store;
use std::net::Ipv4Addr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn proxy(limits: Limits) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.db")).expect("store");
    let m = Manager::new(
        store,
        DaemonPaths {
            state_dir: dir.path().join("state"),
            runtime_dir: dir.path().join("run"),
        },
        Box::new(skiff_vmm::backend::Qemu),
        Arc::new(crate::hostops::RecordingHost::default()),
    );
    let cfg = ProxyConfig {
        http: Some("127.0.0.1:0".parse().expect("addr")),
        limits,
        ..ProxyConfig::default()
    };
    let bound = start(m, cfg).await.expect("start");
    (bound.http.expect("http"), dir)
}

/// A connection from `from` (any 127/8 address is this host).
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((from, 0))).expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Whether the proxy has closed `s`, waiting at most `wait` for it to.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut probe = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut probe)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Read until the proxy closes the connection (at most 10 s): what it sent
/// and how long that took.
async fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy did not close the connection");
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

async fn get(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .expect("an answer");
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_cut_off_and_capped_while_others_get_through() {
    let limits = Limits {
        header_read: Duration::from_millis(800),
        idle: Duration::from_millis(800),
        max_connections: 60,
        max_per_ip: 20,
        ..Limits::default()
    };
    let (addr, _dir) = proxy(limits).await;
    let here = Ipv4Addr::new(127, 0, 0, 1);
    let other = Ipv4Addr::new(127, 0, 0, 2);

    // One address opens 25 connections and sends nothing: 20 are held, the
    // rest closed at once.
    let mut idle = Vec::new();
    for _ in 0..25 {
        idle.push(connect_from(here, addr).await);
    }
    // Refused ones are closed by now; the check of each is quick, so that
    // all of them happen well before the header timeout.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for mut s in idle {
        if closed_within(&mut s, Duration::from_millis(5)).await {
            refused += 1;
        } else {
            held.push(s);
        }
    }
    assert_eq!(
        (held.len(), refused),
        (20, 5),
        "held and refused for one address"
    );

    // Meanwhile another address is served.
    let mut s = connect_from(other, addr).await;
    assert_eq!(
        get(&mut s).await,
        "HTTP/1.1 404",
        "served while another holds its cap"
    );

    // A head sent a byte at a time is cut off at the header timeout.
    let mut slow = connect_from(other, addr).await;
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: nowhere.test\r\nX-Slow: ";
    for b in head.iter().chain([b'a'; 200].iter()) {
        if slow.write_all(&[*b]).await.is_err() || started.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (reply, _) = read_to_close(&mut slow).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a slow head was held for {:?}",
        started.elapsed()
    );
    assert!(!reply.contains("404"), "a slow head got an answer: {reply}");

    // The idle connections are closed by the header timeout, and then the
    // address may connect again.
    for mut s in held {
        let (bytes, waited) = read_to_close(&mut s).await;
        assert!(
            waited < Duration::from_secs(3),
            "an idle connection held {waited:?}"
        );
        assert!(
            !bytes.contains("404"),
            "an idle connection was answered: {bytes}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = connect_from(here, addr).await;
    assert_eq!(get(&mut s).await, "HTTP/1.1 404");
    // After its answer, a kept-alive connection is closed once idle.
    let started = Instant::now();
    let _ = read_to_close(&mut s).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "an idle keep-alive held {:?}",
        started.elapsed()
    );
}
