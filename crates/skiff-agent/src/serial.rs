//! The control channel over a virtio-serial port, for VMs that can be
//! snapshotted: every host connection is a channel of one multiplexed
//! stream (see [`skiff_proto::mux`]), served exactly like a vsock
//! connection.

use crate::log;
use skiff_proto::mux::{MuxDecoder, MuxFrame, MAX_DATA, PORT_NAME, WINDOW};
use skiff_proto::AGENT_PORT;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Whether the host asked for this transport (`skiff.transport=serial`).
pub fn wanted(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|t| t == "skiff.transport=serial")
}

/// The port's device node, found by its name; it appears once the
/// virtio_console driver has probed the device.
fn find_port(wait: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                let dev = PathBuf::from("/dev").join(e.file_name());
                if name.trim() == PORT_NAME && dev.exists() {
                    return Some(dev);
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One channel's state as both its halves and the port reader see it.
struct Channel {
    /// Data from the host, for the reader half; dropped when the channel
    /// closes, so that the reader sees the end.
    inbox: Option<Sender<Vec<u8>>>,
    /// Bytes the host sent that the reader half has not consumed yet.
    unread: Arc<AtomicU32>,
    /// How much the writer half may still send, and whether it may at all.
    credit: Arc<(Mutex<Credit>, Condvar)>,
}

struct Credit {
    bytes: u32,
    open: bool,
}

/// The session: the port and the channels on it.
pub struct Mux {
    port: Mutex<File>,
    channels: Mutex<HashMap<u32, Channel>>,
    /// Guest-opened channels waiting for the host's accept (true) or close.
    opening: Mutex<HashMap<u32, Sender<bool>>>,
    next_channel: AtomicU32,
    /// Set once a host has attached.
    attached: (Mutex<bool>, Condvar),
    /// The nonce of the host attached now: a repeated attach of the same
    /// host is only answered again.
    session: Mutex<Option<u64>>,
}

impl Mux {
    fn send(&self, frame: &MuxFrame) -> io::Result<()> {
        let mut port = self.port.lock().unwrap_or_else(|p| p.into_inner());
        port.write_all(&frame.encode())
    }

    /// Register a channel; returns its two halves.
    fn add_channel(self: &Arc<Mux>, id: u32) -> (ChannelReader, ChannelWriter) {
        let (tx, rx) = mpsc::channel();
        let unread = Arc::new(AtomicU32::new(0));
        let credit = Arc::new((
            Mutex::new(Credit {
                bytes: WINDOW,
                open: true,
            }),
            Condvar::new(),
        ));
        let channel = Channel {
            inbox: Some(tx),
            unread: unread.clone(),
            credit: credit.clone(),
        };
        self.lock_channels().insert(id, channel);
        let reader = ChannelReader {
            mux: self.clone(),
            id,
            inbox: rx,
            unread,
            leftover: Vec::new(),
        };
        let writer = ChannelWriter {
            mux: self.clone(),
            id,
            credit,
        };
        (reader, writer)
    }

    fn lock_channels(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Channel>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Close a channel on this side: its reader sees the end once it has
    /// read what arrived, its writer fails.
    fn drop_channel(&self, id: u32) {
        if let Some(ch) = self.lock_channels().remove(&id) {
            let (lock, cv) = &*ch.credit;
            lock.lock().unwrap_or_else(|p| p.into_inner()).open = false;
            cv.notify_all();
        }
    }

    /// Open a channel to the host's `port` (the ready connection).
    pub fn connect(self: &Arc<Mux>, port: u32) -> Option<(ChannelReader, ChannelWriter)> {
        {
            let (lock, cv) = &self.attached;
            let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, _) = cv
                .wait_timeout_while(guard, Duration::from_secs(60), |a| !*a)
                .unwrap_or_else(|p| p.into_inner());
            if !*guard {
                log(format_args!("no host attached to the serial port"));
                return None;
            }
        }
        let id = self.next_channel.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        self.opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let halves = self.add_channel(id);
        let sent = self.send(&MuxFrame::Open { channel: id, port }).is_ok();
        if sent && rx.recv_timeout(Duration::from_secs(30)) == Ok(true) {
            return Some(halves);
        }
        self.opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        log(format_args!("the host refused a connection to port {port}"));
        None
    }

    /// Read the port for ever, dispatching frames.
    fn run(self: &Arc<Mux>, mut port: File, on_open: &dyn Fn(ChannelReader, ChannelWriter)) {
        let mut decoder = MuxDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match port.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log(format_args!("reading the serial port failed: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if n == 0 {
                // No host on the other end: whatever it sent last is cut.
                decoder.reset();
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            for frame in decoder.feed(&buf[..n]).into_iter().flatten() {
                self.dispatch(frame, on_open);
            }
        }
    }

    fn dispatch(self: &Arc<Mux>, frame: MuxFrame, on_open: &dyn Fn(ChannelReader, ChannelWriter)) {
        match frame {
            MuxFrame::Attach { nonce } => {
                let same = {
                    let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
                    session.replace(nonce) == Some(nonce)
                };
                if same {
                    let _ = self.send(&MuxFrame::Attached { nonce });
                    return;
                }
                // A new host: the old one's channels have no one to talk to.
                let ids: Vec<u32> = self.lock_channels().keys().copied().collect();
                for id in ids {
                    self.drop_channel(id);
                }
                for (_, waiting) in self
                    .opening
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain()
                {
                    let _ = waiting.send(false);
                }
                // The zero first ends any half frame the host still holds.
                // The answer goes out before anyone may open a channel: the
                // host ignores what comes before it.
                let answer = MuxFrame::Attached { nonce }.encode_resync();
                let _ = self
                    .port
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write_all(&answer);
                let (lock, cv) = &self.attached;
                *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
                cv.notify_all();
            }
            MuxFrame::Open { channel, port } => {
                let fresh = channel % 2 == 0 && !self.lock_channels().contains_key(&channel);
                if fresh && port == AGENT_PORT {
                    let (r, w) = self.add_channel(channel);
                    if self.send(&MuxFrame::Accept { channel }).is_ok() {
                        on_open(r, w);
                    }
                } else {
                    let _ = self.send(&MuxFrame::Close { channel });
                }
            }
            MuxFrame::Accept { channel } | MuxFrame::Close { channel }
                if self.is_opening(channel) =>
            {
                let accepted = matches!(frame, MuxFrame::Accept { .. });
                if !accepted {
                    self.drop_channel(channel);
                }
                if let Some(w) = self
                    .opening
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&channel)
                {
                    let _ = w.send(accepted);
                }
            }
            MuxFrame::Close { channel } => {
                // The reader half still reads what came before.
                if let Some(ch) = self.lock_channels().get_mut(&channel) {
                    ch.inbox = None;
                    let (lock, cv) = &*ch.credit;
                    lock.lock().unwrap_or_else(|p| p.into_inner()).open = false;
                    cv.notify_all();
                }
            }
            MuxFrame::Data { channel, bytes } => {
                let mut channels = self.lock_channels();
                let Some(ch) = channels.get_mut(&channel) else {
                    return;
                };
                let len = bytes.len() as u32;
                let unread = ch.unread.fetch_add(len, Ordering::SeqCst) + len;
                let delivered =
                    unread <= WINDOW && ch.inbox.as_ref().is_some_and(|tx| tx.send(bytes).is_ok());
                if !delivered {
                    drop(channels);
                    self.drop_channel(channel);
                    let _ = self.send(&MuxFrame::Close { channel });
                }
            }
            MuxFrame::Credit { channel, bytes } => {
                if let Some(ch) = self.lock_channels().get(&channel) {
                    let (lock, cv) = &*ch.credit;
                    let mut c = lock.lock().unwrap_or_else(|p| p.into_inner());
                    c.bytes = c.bytes.saturating_add(bytes).min(WINDOW);
                    cv.notify_all();
                }
            }
            MuxFrame::Accept { .. } | MuxFrame::Attached { .. } => {}
        }
    }

    fn is_opening(&self, channel: u32) -> bool {
        self.opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&channel)
    }
}

/// The reading half of a channel.
pub struct ChannelReader {
    mux: Arc<Mux>,
    id: u32,
    inbox: Receiver<Vec<u8>>,
    unread: Arc<AtomicU32>,
    leftover: Vec<u8>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.leftover.is_empty() {
            match self.inbox.recv() {
                Ok(bytes) => self.leftover = bytes,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.leftover.len());
        buf[..n].copy_from_slice(&self.leftover[..n]);
        self.leftover.drain(..n);
        let n32 = n as u32;
        self.unread.fetch_sub(n32, Ordering::SeqCst);
        if n > 0 {
            let _ = self.mux.send(&MuxFrame::Credit {
                channel: self.id,
                bytes: n32,
            });
        }
        Ok(n)
    }
}

impl Drop for ChannelReader {
    /// The connection is over: tell the host.
    fn drop(&mut self) {
        self.mux.drop_channel(self.id);
        let _ = self.mux.send(&MuxFrame::Close { channel: self.id });
    }
}

/// The writing half of a channel.
pub struct ChannelWriter {
    mux: Arc<Mux>,
    id: u32,
    credit: Arc<(Mutex<Credit>, Condvar)>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = {
            let (lock, cv) = &*self.credit;
            let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut c = cv
                .wait_while(guard, |c| c.open && c.bytes == 0)
                .unwrap_or_else(|p| p.into_inner());
            if !c.open {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(c.bytes as usize).min(MAX_DATA);
            c.bytes -= n as u32;
            n
        };
        self.mux.send(&MuxFrame::Data {
            channel: self.id,
            bytes: buf[..n].to_vec(),
        })?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serve host connections arriving on the serial port, calling `on_open`
/// for each; returns the session (for the ready connection) once the port
/// is open, or None if there is no port.
pub fn start(on_open: Box<dyn Fn(ChannelReader, ChannelWriter) + Send>) -> Option<Arc<Mux>> {
    let Some(path) = find_port(Duration::from_secs(10)) else {
        log(format_args!("no virtio-serial port named {PORT_NAME}"));
        return None;
    };
    // A port opens once at a time: the writer is a duplicate descriptor.
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .and_then(|r| r.try_clone().map(|w| (r, w)));
    let (reader, writer) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            log(format_args!("cannot open {}: {e}", path.display()));
            return None;
        }
    };
    let mux = Arc::new(Mux {
        port: Mutex::new(writer),
        channels: Mutex::new(HashMap::new()),
        opening: Mutex::new(HashMap::new()),
        next_channel: AtomicU32::new(1),
        attached: (Mutex::new(false), Condvar::new()),
        session: Mutex::new(None),
    });
    let session = mux.clone();
    let spawned = std::thread::Builder::new()
        .name("serial".into())
        .spawn(move || session.run(reader, &*on_open));
    if let Err(e) = spawned {
        log(format_args!("cannot start the serial thread: {e}"));
        return None;
    }
    Some(mux)
}
