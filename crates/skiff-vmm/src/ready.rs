//! When a guest without skiff's agent counts as up: a console line matches
//! a pattern, or a TCP port answers. The guest is not trusted: the console
//! is read in bounded pieces from where this boot began. A port reached
//! directly (the guest's address on a managed network) answers when it
//! accepts. Through a user-mode forward, QEMU accepts on the guest's behalf
//! at once and holds the connection open while the guest is not even up,
//! so there only a greeting counts: the guest's server must speak first
//! (as SSH does).

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// What to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyProbe {
    /// A console line (or the unfinished last one, such as a `login: `
    /// prompt) matches this regular expression.
    Console(String),
    /// A connection to `addr` is accepted (`direct`), or sends something
    /// within [`GREETING_WAIT`] (through a forward).
    Tcp { addr: SocketAddr, direct: bool },
}

impl ReadyProbe {
    /// What the probe waits for, for messages.
    pub fn describe(&self) -> String {
        match self {
            ReadyProbe::Console(re) => format!("console line matching {re:?}"),
            ReadyProbe::Tcp { addr, direct: true } => format!("answer on {addr}"),
            ReadyProbe::Tcp {
                addr,
                direct: false,
            } => {
                format!("greeting from the guest's server through the forward {addr}")
            }
        }
    }
}

/// How long a forwarded connection may take to send its first byte.
pub const GREETING_WAIT: Duration = Duration::from_secs(2);
/// The longest console line kept while looking for a match: a guest that
/// prints without newlines cannot make the daemon hold more.
const LINE_MAX: usize = 4096;
/// How much console is read per poll (every 100 ms).
const POLL_MAX: u64 = 1024 * 1024;

/// Follows a console log from an offset, line by line.
#[derive(Debug)]
pub struct ConsoleWatch {
    path: PathBuf,
    offset: u64,
    line: Vec<u8>,
}

impl ConsoleWatch {
    /// Watch what is appended to `path` after `offset` (its length when
    /// this boot began: the log keeps earlier boots).
    pub fn new(path: &Path, offset: u64) -> ConsoleWatch {
        ConsoleWatch {
            path: path.to_owned(),
            offset,
            line: Vec::new(),
        }
    }

    /// Read what is new (up to [`POLL_MAX`] bytes, so one poll stays
    /// short and a chatty guest is still read faster than it can print);
    /// true when a line matched.
    pub fn poll(&mut self, pattern: &regex::Regex) -> bool {
        let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if len < self.offset {
            // The log was cut back (console::trim): what was not read yet
            // is at the end of console.log.1, the log goes on from 0.
            self.offset = 0;
            self.line.clear();
            let kept = self.path.with_extension("log.1");
            if scan(&kept, 0, POLL_MAX, &mut self.line, pattern).1 {
                return true;
            }
            self.line.clear();
        }
        let (read, found) = scan(&self.path, self.offset, POLL_MAX, &mut self.line, pattern);
        self.offset += read;
        found
    }
}

/// Read `path` from `offset`, at most `max` bytes, feeding lines to
/// `pattern` (`line` carries the unfinished one across calls). Returns the
/// bytes read and whether a line, or the unfinished last one (a prompt has
/// no newline after it), matched.
fn scan(
    path: &Path,
    offset: u64,
    max: u64,
    line: &mut Vec<u8>,
    pattern: &regex::Regex,
) -> (u64, bool) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (0, false);
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return (0, false);
    }
    let mut buf = Vec::new();
    let Ok(n) = f.take(max).read_to_end(&mut buf) else {
        return (0, false);
    };
    for &b in &buf {
        if b == b'\n' {
            if matches(line, pattern) {
                return (n as u64, true);
            }
            line.clear();
        } else if line.len() < LINE_MAX {
            line.push(b);
        }
    }
    (n as u64, matches(line, pattern))
}

fn matches(line: &[u8], pattern: &regex::Regex) -> bool {
    let text = String::from_utf8_lossy(line);
    pattern.is_match(text.trim_end_matches('\r'))
}

/// One try at a TCP readiness probe: connected (`direct`), or connected
/// and greeted.
pub async fn tcp_answers(addr: SocketAddr, direct: bool) -> bool {
    let connect = tokio::net::TcpStream::connect(addr);
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
        return false;
    };
    if direct {
        return true;
    }
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(GREETING_WAIT, stream.read(&mut byte)).await,
        Ok(Ok(1))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_console_match_is_found_in_new_lines_and_in_an_unfinished_prompt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        std::fs::write(&log, "old boot: login: \n").expect("write");
        let start = std::fs::metadata(&log).expect("meta").len();
        let mut watch = ConsoleWatch::new(&log, start);
        let login = regex::Regex::new("login: *$").expect("regex");
        assert!(
            !watch.poll(&login),
            "a previous boot's prompt must not count"
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        f.write_all(b"[    1.0] booting\r\nDebian GNU/Linux 12 box ttyS")
            .expect("write");
        assert!(!watch.poll(&login));
        f.write_all(b"0\r\n\r\nbox login: ").expect("write");
        assert!(watch.poll(&login), "the prompt without a newline matches");
    }

    #[test]
    fn an_endless_console_line_is_bounded_and_a_cut_log_is_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        std::fs::write(&log, vec![b'x'; 3 * POLL_MAX as usize]).expect("write");
        let mut watch = ConsoleWatch::new(&log, 0);
        let ready = regex::Regex::new("^READY$").expect("regex");
        for _ in 0..3 {
            assert!(!watch.poll(&ready));
        }
        assert_eq!(watch.offset, 3 * POLL_MAX);
        assert!(watch.line.len() <= LINE_MAX);
        // Cut back by console::trim while unread: the line went to
        // console.log.1, and the log starts again.
        std::fs::write(dir.path().join("console.log.1"), "booting\nREADY\n").expect("write");
        std::fs::write(&log, "later\n").expect("write");
        assert!(
            watch.poll(&ready),
            "the line moved to console.log.1 is seen"
        );
        // Cut back again, the new log holding the line itself.
        std::fs::write(dir.path().join("console.log.1"), "nothing\n").expect("write");
        std::fs::write(&log, vec![b'y'; 4 * POLL_MAX as usize]).expect("write");
        let mut watch = ConsoleWatch::new(&log, 4 * POLL_MAX);
        std::fs::write(&log, "READY\n").expect("write");
        assert!(watch.poll(&ready));
    }

    #[tokio::test]
    async fn through_a_forward_only_a_greeting_counts_and_directly_an_accept_does() {
        use tokio::io::AsyncWriteExt;
        let speaking = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let speaking_addr = speaking.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = speaking.accept().await {
                let _ = s.write_all(b"SSH-2.0-x\r\n").await;
            }
        });
        assert!(tcp_answers(speaking_addr, false).await);

        // What QEMU's forward does while the guest is down: accept, then
        // hold the connection silently (or close it).
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let silent_addr = silent.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                kept.push(s);
            }
        });
        assert!(!tcp_answers(silent_addr, false).await);
        assert!(
            tcp_answers(silent_addr, true).await,
            "directly, an accept is an answer"
        );
        held.abort();

        let closing = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let closing_addr = closing.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = closing.accept().await {
                drop(s);
            }
        });
        assert!(!tcp_answers(closing_addr, false).await);

        let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let refused = unused.local_addr().expect("addr");
        drop(unused);
        assert!(!tcp_answers(refused, true).await);
    }
}
