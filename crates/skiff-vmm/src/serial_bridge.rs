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

/// How often an unanswered attach is repeated (and how often a session
/// whose queue to QEMU was full looks again).
const ATTACH_RETRY: Duration = Duration::from_millis(500);

/// Bytes queued for QEMU beyond which the session stops taking more (from
/// the guest or the clients) until QEMU has taken some: a guest that does
/// not read its port holds up only its own VM, and bounded memory.
const QUEUE_LIMIT: usize = 4 << 20;

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
        let room = session.has_room();
        tokio::select! {
            accepted = qemu_listener.accept() => match accepted {
                Ok((stream, _)) => session.replace_qemu(stream),
                Err(e) => refused_connection(e).await,
            },
            accepted = client_listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_client(stream, cmd_tx.clone()));
                }
                Err(e) => refused_connection(e).await,
            },
            Some(cmd) = cmd_rx.recv(), if room => session.command(cmd),
            // The guest is always read (its writes hold its port, which
            // its own reader needs to answer); only new work waits for room.
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

/// An accept that failed (out of descriptors, say) is not the end of the
/// VM's control channel: note it, and try again a little later.
async fn refused_connection(e: io::Error) {
    eprintln!("skiff serial-bridge: accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

struct Session {
    uds: PathBuf,
    /// Bytes given to the writer task and not yet written to QEMU.
    queued: Arc<std::sync::atomic::AtomicUsize>,
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
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
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
        self.send_bytes(frame.encode());
    }

    fn send_bytes(&self, bytes: Vec<u8>) {
        if let Some(tx) = &self.qemu_write {
            use std::sync::atomic::Ordering;
            // Counted before the writer can see it (and subtract it).
            let len = bytes.len();
            self.queued.fetch_add(len, Ordering::SeqCst);
            if tx.send(bytes).is_err() {
                self.queued.fetch_sub(len, Ordering::SeqCst);
            }
        }
    }

    fn has_room(&self) -> bool {
        self.queued.load(std::sync::atomic::Ordering::SeqCst) < QUEUE_LIMIT
    }

    fn replace_qemu(&mut self, stream: UnixStream) {
        self.qemu_gone();
        let (r, mut w) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        // A fresh count per QEMU: what the old writer still held is gone.
        self.queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let queued = self.queued.clone();
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if w.write_all(&bytes).await.is_err() {
                    // QEMU is gone: nothing waits for this queue any more.
                    queued.store(0, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
                queued.fetch_sub(bytes.len(), std::sync::atomic::Ordering::SeqCst);
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
        // The zero ends whatever half frame the guest holds.
        self.send_bytes(MuxFrame::Attach { nonce: self.nonce }.encode_resync());
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
            // Every open costs an answer in the queue: none while it is full.
            MuxFrame::Open { .. } if !self.has_room() => {}
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
            // An empty data frame carries nothing (and would cost a credit).
            MuxFrame::Data { bytes, .. } if bytes.is_empty() => {}
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
#[path = "serial_bridge_tests.rs"]
mod tests;
