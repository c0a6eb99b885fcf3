//! The host end of the serial control channel: `skiff serial-bridge`.
//!
//! It stands where vhost-device-vsock stands for other VMs and offers the
//! same Unix sockets, so nothing above it knows the difference: a client of
//! `<uds>` says `CONNECT <port>` and gets `OK <port>` and a byte stream to
//! the agent; a connection the guest opens to host port P arrives at
//! `<uds>_P`. Underneath, every connection is a channel of the one
//! virtio-serial port (see [`skiff_proto::mux`]). QEMU connects to the
//! bridge's `listen` socket; when QEMU is replaced (a resume starts a new
//! one), the next QEMU connects again, the bridge attaches anew and the
//! channels of the old session end.
//!
//! The guest is untrusted: its frames are bounded by the decoder, data past
//! a channel's window closes that channel, and a stalled client stalls only
//! its own channel (every channel has its own queue, bounded by the window).

use skiff_proto::mux::{MuxDecoder, MuxFrame, MAX_DATA, SESSION, WINDOW};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// How often an unanswered attach is repeated.
const ATTACH_RETRY: Duration = Duration::from_millis(500);

/// What a connection task asks of the session.
enum Command {
    /// A client wants a channel to guest `port`.
    Open {
        port: u32,
        reply: oneshot::Sender<Option<Pipes>>,
    },
    /// Bytes from a client for the guest.
    Data { channel: u32, bytes: Vec<u8> },
    /// A client consumed this much of what the guest sent.
    Consumed { channel: u32, bytes: u32 },
    /// A client went away.
    Closed { channel: u32 },
}

/// A channel's ends as its connection task holds them.
struct Pipes {
    channel: u32,
    from_guest: mpsc::UnboundedReceiver<Vec<u8>>,
    credit: Arc<Semaphore>,
}

/// A channel as the session holds it.
struct HostChannel {
    to_client: mpsc::UnboundedSender<Vec<u8>>,
    credit: Arc<Semaphore>,
    /// Sent by the guest, not yet consumed by the client.
    unread: u32,
}

/// Serve until killed: QEMU connects to `listen`, clients to `uds`.
pub async fn run(listen: &Path, uds: &Path) -> io::Result<()> {
    let qemu_listener = UnixListener::bind(listen)?;
    let client_listener = UnixListener::bind(uds)?;
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Command>();
    let mut session = Session::new(uds.to_owned(), cmd_tx.clone());
    let mut buf = vec![0u8; 64 * 1024];
    let mut attach_timer =
        tokio::time::interval_at(tokio::time::Instant::now() + ATTACH_RETRY, ATTACH_RETRY);
    loop {
        tokio::select! {
            accepted = qemu_listener.accept() => {
                let (stream, _) = accepted?;
                session.replace_qemu(stream);
            }
            accepted = client_listener.accept() => {
                let (stream, _) = accepted?;
                tokio::spawn(serve_client(stream, cmd_tx.clone()));
            }
            Some(cmd) = cmd_rx.recv() => session.command(cmd),
            read = session.read_qemu(&mut buf) => match read {
                Ok(0) | Err(_) => session.qemu_gone(),
                Ok(n) => {
                    let frames = session.decoder.feed(&buf[..n]);
                    for frame in frames.into_iter().flatten() {
                        session.guest_frame(frame).await;
                    }
                }
            },
            _ = attach_timer.tick() => session.attach_again(),
        }
    }
}

struct Session {
    uds: PathBuf,
    cmd_tx: mpsc::UnboundedSender<Command>,
    qemu_read: Option<tokio::net::unix::OwnedReadHalf>,
    /// Frames for QEMU, written by their own task so that a guest that
    /// does not read never blocks the session.
    qemu_write: Option<mpsc::UnboundedSender<Vec<u8>>>,
    decoder: MuxDecoder,
    nonce: u64,
    attached: bool,
    channels: HashMap<u32, HostChannel>,
    /// Channels asked for, waiting for the guest's accept.
    opening: HashMap<u32, oneshot::Sender<Option<Pipes>>>,
    /// Opens that wait for a session.
    waiting: Vec<(u32, oneshot::Sender<Option<Pipes>>)>,
    next_channel: u32,
}

impl Session {
    fn new(uds: PathBuf, cmd_tx: mpsc::UnboundedSender<Command>) -> Session {
        Session {
            uds,
            cmd_tx,
            qemu_read: None,
            qemu_write: None,
            decoder: MuxDecoder::new(),
            nonce: 0,
            attached: false,
            channels: HashMap::new(),
            opening: HashMap::new(),
            waiting: Vec::new(),
            next_channel: 2,
        }
    }

    async fn read_qemu(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.qemu_read {
            Some(r) => r.read(buf).await,
            None => std::future::pending().await,
        }
    }

    fn send(&self, frame: &MuxFrame) {
        if let Some(tx) = &self.qemu_write {
            let _ = tx.send(frame.encode());
        }
    }

    fn replace_qemu(&mut self, stream: UnixStream) {
        self.qemu_gone();
        let (r, mut w) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if w.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        self.qemu_read = Some(r);
        self.qemu_write = Some(tx);
        self.nonce = new_nonce();
        self.attach_again();
    }

    /// (Re)send the attach until the guest answers it.
    fn attach_again(&self) {
        if self.attached {
            return;
        }
        if let Some(tx) = &self.qemu_write {
            // The zero ends whatever half frame the guest holds.
            let mut bytes = vec![0];
            bytes.extend(MuxFrame::Attach { nonce: self.nonce }.encode());
            let _ = tx.send(bytes);
        }
    }

    /// QEMU went away (paused, or exited): every channel ends.
    fn qemu_gone(&mut self) {
        self.qemu_read = None;
        self.qemu_write = None;
        self.decoder.reset();
        self.attached = false;
        for (_, ch) in self.channels.drain() {
            ch.credit.close();
        }
        for (_, reply) in self.opening.drain() {
            let _ = reply.send(None);
        }
    }

    fn new_channel(&mut self, id: u32) -> Pipes {
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(WINDOW as usize));
        self.channels.insert(
            id,
            HostChannel {
                to_client: tx,
                credit: credit.clone(),
                unread: 0,
            },
        );
        Pipes {
            channel: id,
            from_guest: rx,
            credit,
        }
    }

    fn open(&mut self, port: u32, reply: oneshot::Sender<Option<Pipes>>) {
        if !self.attached {
            self.waiting.push((port, reply));
            return;
        }
        let channel = self.next_channel;
        self.next_channel = self.next_channel.wrapping_add(2).max(2);
        self.opening.insert(channel, reply);
        self.send(&MuxFrame::Open { channel, port });
    }

    fn close(&mut self, channel: u32) {
        if let Some(ch) = self.channels.remove(&channel) {
            ch.credit.close();
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Open { port, reply } => self.open(port, reply),
            Command::Data { channel, bytes } => {
                if self.channels.contains_key(&channel) {
                    self.send(&MuxFrame::Data { channel, bytes });
                }
            }
            Command::Consumed { channel, bytes } => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.unread = ch.unread.saturating_sub(bytes);
                    self.send(&MuxFrame::Credit { channel, bytes });
                }
            }
            Command::Closed { channel } => {
                if self.channels.contains_key(&channel) {
                    self.close(channel);
                    self.send(&MuxFrame::Close { channel });
                }
            }
        }
    }

    async fn guest_frame(&mut self, frame: MuxFrame) {
        match frame {
            MuxFrame::Attached { nonce } if nonce == self.nonce && !self.attached => {
                self.attached = true;
                for (port, reply) in std::mem::take(&mut self.waiting) {
                    self.open(port, reply);
                }
            }
            // Anything before the answer belongs to an earlier session.
            _ if !self.attached => {}
            MuxFrame::Accept { channel } => {
                if let Some(reply) = self.opening.remove(&channel) {
                    let pipes = self.new_channel(channel);
                    if reply.send(Some(pipes)).is_err() {
                        self.close(channel);
                        self.send(&MuxFrame::Close { channel });
                    }
                }
            }
            MuxFrame::Open { channel, port } => {
                let fresh =
                    channel % 2 == 1 && channel != SESSION && !self.channels.contains_key(&channel);
                let target = crate::plan::ready_socket_path(&self.uds, port);
                let stream = match fresh {
                    true => UnixStream::connect(&target).await.ok(),
                    false => None,
                };
                match stream {
                    Some(stream) => {
                        let pipes = self.new_channel(channel);
                        self.send(&MuxFrame::Accept { channel });
                        tokio::spawn(pump(stream, pipes, self.cmd_tx.clone()));
                    }
                    None => self.send(&MuxFrame::Close { channel }),
                }
            }
            MuxFrame::Data { channel, bytes } => {
                let Some(ch) = self.channels.get_mut(&channel) else {
                    return;
                };
                ch.unread = ch.unread.saturating_add(bytes.len() as u32);
                // Past the window is a guest breaking the protocol.
                if ch.unread > WINDOW || ch.to_client.send(bytes).is_err() {
                    self.close(channel);
                    self.send(&MuxFrame::Close { channel });
                }
            }
            MuxFrame::Credit { channel, bytes } => {
                if let Some(ch) = self.channels.get(&channel) {
                    let room = (WINDOW as usize).saturating_sub(ch.credit.available_permits());
                    ch.credit.add_permits((bytes as usize).min(room));
                }
            }
            MuxFrame::Close { channel } => {
                if let Some(reply) = self.opening.remove(&channel) {
                    let _ = reply.send(None);
                }
                self.close(channel);
            }
            MuxFrame::Attach { .. } | MuxFrame::Attached { .. } => {}
        }
    }
}

fn new_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// One client of `<uds>`: `CONNECT <port>`, then its channel's bytes.
async fn serve_client(mut stream: UnixStream, cmd_tx: mpsc::UnboundedSender<Command>) {
    let mut line = Vec::new();
    while line.len() <= 64 {
        match stream.read_u8().await {
            Ok(b'\n') => break,
            Ok(b) => line.push(b),
            Err(_) => return,
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let Some(port) = line
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        let _ = stream.write_all(b"ERROR bad CONNECT line\n").await;
        return;
    };
    let (reply, answer) = oneshot::channel();
    if cmd_tx.send(Command::Open { port, reply }).is_err() {
        return;
    }
    let Ok(Some(pipes)) = answer.await else {
        let _ = stream.write_all(b"ERROR refused\n").await;
        return;
    };
    if stream
        .write_all(format!("OK {port}\n").as_bytes())
        .await
        .is_err()
    {
        let _ = cmd_tx.send(Command::Closed {
            channel: pipes.channel,
        });
        return;
    }
    pump(stream, pipes, cmd_tx).await;
}

/// Move bytes both ways between a Unix stream and its channel until either
/// side ends.
async fn pump(stream: UnixStream, pipes: Pipes, cmd_tx: mpsc::UnboundedSender<Command>) {
    let Pipes {
        channel,
        mut from_guest,
        credit,
    } = pipes;
    let (mut r, mut w) = stream.into_split();
    let consumed_tx = cmd_tx.clone();
    let to_client = async move {
        while let Some(bytes) = from_guest.recv().await {
            if w.write_all(&bytes).await.is_err() {
                break;
            }
            let _ = consumed_tx.send(Command::Consumed {
                channel,
                bytes: bytes.len() as u32,
            });
        }
        let _ = w.shutdown().await;
    };
    let to_guest = async {
        let mut buf = vec![0u8; MAX_DATA];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Wait for the guest to have room; a closed channel ends here.
            match credit.acquire_many(n as u32).await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
            let bytes = buf[..n].to_vec();
            if cmd_tx.send(Command::Data { channel, bytes }).is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = to_client => {}
        _ = to_guest => {}
    }
    let _ = cmd_tx.send(Command::Closed { channel });
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::mux::MuxFrame as F;

    /// The guest's end of the serial port, as a test drives it.
    struct Guest {
        stream: UnixStream,
        decoder: MuxDecoder,
        pending: std::collections::VecDeque<MuxFrame>,
        attached: bool,
        skip_credit: bool,
    }

    impl Guest {
        async fn connect(listen: &Path) -> Guest {
            for _ in 0..200 {
                if let Ok(stream) = UnixStream::connect(listen).await {
                    return Guest {
                        stream,
                        decoder: MuxDecoder::new(),
                        pending: Default::default(),
                        attached: false,
                        skip_credit: false,
                    };
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the bridge does not listen");
        }

        /// The next frame; a repeated attach is answered as the agent does.
        async fn next(&mut self) -> MuxFrame {
            loop {
                match self.next_any().await {
                    F::Attach { nonce } if self.attached => {
                        self.send(F::Attached { nonce }).await;
                    }
                    F::Credit { .. } if self.skip_credit => {}
                    f => return f,
                }
            }
        }

        async fn next_any(&mut self) -> MuxFrame {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(f) = self.pending.pop_front() {
                    return f;
                }
                let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf))
                    .await
                    .expect("a frame in time")
                    .expect("read");
                assert!(n > 0, "the bridge hung up");
                self.pending
                    .extend(self.decoder.feed(&buf[..n]).into_iter().flatten());
            }
        }

        async fn send(&mut self, frame: F) {
            self.stream.write_all(&frame.encode()).await.expect("send");
        }

        /// Answer the attach (after some stale bytes of an older session).
        async fn attach(&mut self) {
            let F::Attach { nonce } = self.next().await else {
                panic!("no attach first");
            };
            self.stream.write_all(&[0x41, 0x42, 0]).await.expect("junk");
            self.send(F::Attached { nonce: nonce ^ 1 }).await;
            self.send(F::Attached { nonce }).await;
            self.attached = true;
        }
    }

    async fn client(uds: &Path, port: u32) -> (UnixStream, String) {
        let mut s = UnixStream::connect(uds).await.expect("connect");
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .expect("w");
        let mut line = Vec::new();
        loop {
            let b = s.read_u8().await.expect("reply");
            if b == b'\n' {
                break;
            }
            line.push(b);
        }
        (s, String::from_utf8(line).expect("utf8"))
    }

    async fn started() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let (listen, uds) = (
            dir.path().join("serial.sock"),
            dir.path().join("vsock.sock"),
        );
        let (l, u) = (listen.clone(), uds.clone());
        tokio::spawn(async move { run(&l, &u).await });
        (dir, listen, uds)
    }

    #[tokio::test]
    async fn a_client_connects_through_the_port_and_bytes_flow_both_ways() {
        let (_dir, listen, uds) = started().await;
        let mut guest = Guest::connect(&listen).await;
        guest.attach().await;
        let ((mut c, reply), channel) = tokio::join!(client(&uds, 1024), async {
            let F::Open { channel, port } = guest.next().await else {
                panic!("no open");
            };
            assert_eq!((channel % 2, port), (0, 1024));
            guest.send(F::Accept { channel }).await;
            channel
        });
        assert_eq!(reply, "OK 1024");
        c.write_all(b"to the guest").await.expect("w");
        assert_eq!(
            guest.next().await,
            F::Data {
                channel,
                bytes: b"to the guest".to_vec()
            }
        );
        guest
            .send(F::Data {
                channel,
                bytes: b"to the host".to_vec(),
            })
            .await;
        let mut got = [0u8; 11];
        c.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"to the host");
        // The guest closes: the client reads the end.
        guest.send(F::Close { channel }).await;
        assert_eq!(c.read(&mut got).await.expect("read"), 0);
        // A client that goes away closes its channel.
        guest.skip_credit = true;
        let open = async {
            let F::Open { channel, .. } = guest.next().await else {
                panic!("no open");
            };
            guest.send(F::Accept { channel }).await;
            channel
        };
        let ((second, _), other) = tokio::join!(client(&uds, 1024), open);
        assert_ne!(other, channel);
        drop(second);
        loop {
            match guest.next().await {
                F::Close { channel } if channel == other => break,
                F::Credit { .. } | F::Close { .. } => {}
                f => panic!("{f:?}"),
            }
        }
    }

    #[tokio::test]
    async fn data_past_the_window_closes_only_that_channel_and_guest_opens_work() {
        let (_dir, listen, uds) = started().await;
        let ready = tokio::net::UnixListener::bind(crate::plan::ready_socket_path(&uds, 1025))
            .expect("bind ready");
        let mut guest = Guest::connect(&listen).await;
        guest.attach().await;
        // The guest opens the ready connection.
        guest
            .send(F::Open {
                channel: 1,
                port: 1025,
            })
            .await;
        let (mut hello_side, _) = ready.accept().await.expect("accept");
        assert_eq!(guest.next().await, F::Accept { channel: 1 });
        guest
            .send(F::Data {
                channel: 1,
                bytes: b"hello".to_vec(),
            })
            .await;
        let mut got = [0u8; 5];
        hello_side.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
        // The host's reader consumed it: credit goes back to the guest.
        assert_eq!(
            guest.next().await,
            F::Credit {
                channel: 1,
                bytes: 5
            }
        );

        // A client nobody reads for: the guest may not flood it.
        let open = async {
            let F::Open { channel, .. } = guest.next().await else {
                panic!("no open");
            };
            guest.send(F::Accept { channel }).await;
            channel
        };
        let ((mut flooded, reply), channel) = tokio::join!(client(&uds, 1024), open);
        assert_eq!(reply, "OK 1024");
        // The bridge hands data on as the client's socket takes it; once
        // that is full, more than a window unacknowledged is a breach.
        let chunk = vec![7u8; skiff_proto::mux::MAX_DATA];
        guest.skip_credit = true;
        for _ in 0..64 {
            guest
                .send(F::Data {
                    channel,
                    bytes: chunk.clone(),
                })
                .await;
        }
        assert_eq!(guest.next().await, F::Close { channel });
        guest.skip_credit = false;
        let mut all = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), flooded.read_to_end(&mut all))
            .await
            .expect("end in time")
            .expect("read");
        assert!(n < 64 * chunk.len(), "{n}");
        // The ready connection still works.
        hello_side.write_all(b"ping").await.expect("w");
        assert_eq!(
            guest.next().await,
            F::Data {
                channel: 1,
                bytes: b"ping".to_vec()
            }
        );
    }

    #[tokio::test]
    async fn a_new_qemu_attaches_anew_and_the_old_channels_end() {
        let (_dir, listen, uds) = started().await;
        let mut guest = Guest::connect(&listen).await;
        guest.attach().await;
        let open = async {
            let F::Open { channel, .. } = guest.next().await else {
                panic!("no open");
            };
            guest.send(F::Accept { channel }).await;
        };
        let ((mut old, _), ()) = tokio::join!(client(&uds, 1024), open);
        drop(guest);
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), old.read_to_end(&mut all))
            .await
            .expect("the old channel ends")
            .expect("read");
        // A client that comes while no guest is attached waits for one.
        let waiting = tokio::spawn({
            let uds = uds.clone();
            async move { client(&uds, 1024).await.1 }
        });
        let mut again = Guest::connect(&listen).await;
        again.attach().await;
        let F::Open { channel, .. } = again.next().await else {
            panic!("no open");
        };
        again.send(F::Accept { channel }).await;
        assert_eq!(waiting.await.expect("client"), "OK 1024");
        // A guest refusal is the client's error line.
        let refused = async {
            // (The waiting client's channel closed when it went.)
            let channel = loop {
                match again.next().await {
                    F::Open { channel, .. } => break channel,
                    F::Close { .. } => {}
                    other => panic!("{other:?}"),
                }
            };
            again.send(F::Close { channel }).await;
        };
        let ((_, reply), ()) = tokio::join!(client(&uds, 9), refused);
        assert!(reply.starts_with("ERROR"), "{reply}");
    }
}
