//! The messages exchanged between host and agent.

use crate::{json_body, push_json, DecodeError};
use serde::{Deserialize, Serialize};

/// First message on every connection, sent by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The agent's [`crate::PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The agent's crate version, for error messages.
    pub agent_version: String,
    /// Boot milestones measured by the guest.
    pub boot: BootTimes,
    /// What the guest could not set up as asked (a missing drive, say); the
    /// host refuses to use a VM that reports any.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// Guest-side boot milestones, in milliseconds of guest uptime (time since
/// the kernel started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootTimes {
    /// When the agent started running as /init.
    pub init_start_ms: u64,
    /// When the agent had loaded its modules and mounted everything.
    pub init_done_ms: u64,
    /// When the agent sent this hello.
    pub ready_ms: u64,
}

/// Run a command in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Extra environment, applied over the agent's defaults.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; `/` when absent.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Whether the host will send stdin. If false the command's stdin is
    /// `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Run as the VM's service: output goes to the guest console, the
    /// command outlives this connection, and when it exits the agent tells
    /// the hypervisor (debug-exit port) and powers the VM off.
    #[serde(default)]
    pub service: bool,
    /// Run on a pseudo-terminal of this size: stdout and stderr are one
    /// stream, and control characters (Ctrl-C) act in the guest.
    #[serde(default)]
    pub tty: Option<WindowSize>,
    /// Run as this user of the guest: a name from its /etc/passwd, or a
    /// numeric `UID` or `UID:GID`. None: root.
    #[serde(default)]
    pub user: Option<String>,
    /// Answer `Started(pid)` once the command runs (before its output), so
    /// that the host can name it by its guest pid. Left out on the wire
    /// when false, which older agents expect.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report_pid: bool,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The exit code a shell would report: the code itself, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// agent -> host, first on every connection.
    Hello(Hello),
    /// host -> agent: start a command. One command at a time per connection.
    Exec(ExecRequest),
    /// host -> agent: bytes for the command's stdin; empty means end of input.
    Stdin(Vec<u8>),
    /// agent -> host: bytes the command wrote to stdout.
    Stdout(Vec<u8>),
    /// agent -> host: bytes the command wrote to stderr.
    Stderr(Vec<u8>),
    /// agent -> host: the command ended; all its output has been sent.
    Exited(ExitStatus),
    /// host -> agent: send this signal to the running command's process group.
    Signal(i32),
    /// host -> agent: sync and power the VM off.
    Shutdown,
    /// agent -> host: a request could not be carried out.
    Error(String),
    /// agent -> host: a service command started with this guest pid.
    Started(u32),
    /// host -> agent: the terminal of a tty command changed size.
    Resize(WindowSize),
    /// host -> agent: entries follow; create them at this guest path.
    CopyIn(String),
    /// host -> agent: send the file or tree at this guest path as entries.
    CopyOut(String),
    /// either way: the next item of a copied tree; a file's bytes follow
    /// as `Data` frames.
    Entry(crate::copy::Entry),
    /// either way: file contents for the last `Entry`.
    Data(Vec<u8>),
    /// either way: no more entries.
    End,
    /// host -> agent: set the guest's wall clock to this many nanoseconds
    /// since the Unix epoch (after a resume, whose guest slept through the
    /// pause); answered with `Exited(Code(0))` or `Error`.
    SetClock(u64),
    /// host -> agent: this guest was started from a snapshot of another
    /// one; take on its own identity. Answered like `SetClock`.
    Renew(Renewal),
    /// host -> agent: a file operation (see [`crate::fs`]).
    Fs(crate::fs::FsCall),
    /// agent -> host: what a file is (an answer of a file operation).
    Info(crate::fs::FileInfo),
    /// agent -> host: a file operation failed.
    FsFailed(crate::fs::FsError),
    /// agent -> host: a change under a watched directory.
    FsEvent(crate::fs::FsEvent),
    /// agent -> host: the answer of a `usage` file operation.
    Usage(crate::fs::GuestUsage),
}

/// A new VM's identity for a guest restored from another VM's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renewal {
    /// The host's wall clock, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Fresh randomness for the guest's pool, which the clones share.
    pub seed: Vec<u8>,
    /// The host name, if the spec names one.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The new VM's interface, if it has one.
    #[serde(default)]
    pub net: Option<RenewedNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewedNet {
    /// `aa:bb:cc:dd:ee:ff`: the network lets only this one through.
    pub mac: String,
    /// `A.B.C.D/PREFIX`.
    pub address: String,
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub dns: Option<std::net::Ipv4Addr>,
}

const TAG_HELLO: u8 = 1;
const TAG_EXEC: u8 = 2;
const TAG_STDIN: u8 = 3;
const TAG_STDOUT: u8 = 4;
const TAG_STDERR: u8 = 5;
const TAG_EXITED: u8 = 6;
const TAG_SIGNAL: u8 = 7;
const TAG_SHUTDOWN: u8 = 8;
const TAG_ERROR: u8 = 9;
const TAG_STARTED: u8 = 10;
const TAG_RESIZE: u8 = 11;
const TAG_COPY_IN: u8 = 12;
const TAG_COPY_OUT: u8 = 13;
const TAG_ENTRY: u8 = 14;
const TAG_DATA: u8 = 15;
const TAG_END: u8 = 16;
const TAG_SET_CLOCK: u8 = 17;
const TAG_RENEW: u8 = 18;
const TAG_FS: u8 = 19;
const TAG_INFO: u8 = 20;
const TAG_FS_FAILED: u8 = 21;
const TAG_FS_EVENT: u8 = 22;
const TAG_USAGE: u8 = 23;

impl Message {
    pub(crate) fn tag(&self) -> u8 {
        match self {
            Message::Hello(_) => TAG_HELLO,
            Message::Exec(_) => TAG_EXEC,
            Message::Stdin(_) => TAG_STDIN,
            Message::Stdout(_) => TAG_STDOUT,
            Message::Stderr(_) => TAG_STDERR,
            Message::Exited(_) => TAG_EXITED,
            Message::Signal(_) => TAG_SIGNAL,
            Message::Shutdown => TAG_SHUTDOWN,
            Message::Error(_) => TAG_ERROR,
            Message::Started(_) => TAG_STARTED,
            Message::Resize(_) => TAG_RESIZE,
            Message::CopyIn(_) => TAG_COPY_IN,
            Message::CopyOut(_) => TAG_COPY_OUT,
            Message::Entry(_) => TAG_ENTRY,
            Message::Data(_) => TAG_DATA,
            Message::End => TAG_END,
            Message::SetClock(_) => TAG_SET_CLOCK,
            Message::Renew(_) => TAG_RENEW,
            Message::Fs(_) => TAG_FS,
            Message::Info(_) => TAG_INFO,
            Message::FsFailed(_) => TAG_FS_FAILED,
            Message::FsEvent(_) => TAG_FS_EVENT,
            Message::Usage(_) => TAG_USAGE,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Exec(_) => "exec",
            Message::Stdin(_) => "stdin",
            Message::Stdout(_) => "stdout",
            Message::Stderr(_) => "stderr",
            Message::Exited(_) => "exited",
            Message::Signal(_) => "signal",
            Message::Shutdown => "shutdown",
            Message::Error(_) => "error",
            Message::Started(_) => "started",
            Message::Resize(_) => "resize",
            Message::CopyIn(_) => "copy-in",
            Message::CopyOut(_) => "copy-out",
            Message::Entry(_) => "entry",
            Message::Data(_) => "data",
            Message::End => "end",
            Message::SetClock(_) => "set-clock",
            Message::Renew(_) => "renew",
            Message::Fs(_) => "fs",
            Message::Info(_) => "info",
            Message::FsFailed(_) => "fs-failed",
            Message::FsEvent(_) => "fs-event",
            Message::Usage(_) => "usage",
        }
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello(h) => push_json(h, out),
            Message::Exec(e) => push_json(e, out),
            Message::Stdin(b) | Message::Stdout(b) | Message::Stderr(b) => out.extend_from_slice(b),
            Message::Exited(s) => push_json(s, out),
            Message::Signal(s) => out.extend_from_slice(&s.to_be_bytes()),
            Message::Shutdown => {}
            Message::Error(m) => out.extend_from_slice(m.as_bytes()),
            Message::Started(pid) => out.extend_from_slice(&pid.to_be_bytes()),
            Message::CopyIn(p) | Message::CopyOut(p) => out.extend_from_slice(p.as_bytes()),
            Message::Entry(e) => push_json(e, out),
            Message::Data(b) => out.extend_from_slice(b),
            Message::End => {}
            Message::SetClock(ns) => out.extend_from_slice(&ns.to_be_bytes()),
            Message::Renew(r) => push_json(r, out),
            Message::Fs(c) => push_json(c, out),
            Message::Info(i) => push_json(i, out),
            Message::FsFailed(e) => push_json(e, out),
            Message::FsEvent(e) => push_json(e, out),
            Message::Usage(u) => push_json(u, out),
            Message::Resize(w) => {
                out.extend_from_slice(&w.rows.to_be_bytes());
                out.extend_from_slice(&w.cols.to_be_bytes());
            }
        }
    }

    pub(crate) fn decode_body(tag: u8, body: &[u8]) -> Result<Message, DecodeError> {
        Ok(match tag {
            TAG_HELLO => Message::Hello(json_body("hello", body)?),
            TAG_EXEC => Message::Exec(json_body("exec", body)?),
            TAG_STDIN => Message::Stdin(body.to_vec()),
            TAG_STDOUT => Message::Stdout(body.to_vec()),
            TAG_STDERR => Message::Stderr(body.to_vec()),
            TAG_EXITED => Message::Exited(json_body("exited", body)?),
            TAG_SIGNAL => {
                let bytes: [u8; 4] = body.try_into().map_err(|_| DecodeError::Malformed {
                    what: "signal",
                    reason: format!("body is {} bytes, expected 4", body.len()),
                })?;
                Message::Signal(i32::from_be_bytes(bytes))
            }
            TAG_SHUTDOWN => {
                if !body.is_empty() {
                    return Err(DecodeError::Malformed {
                        what: "shutdown",
                        reason: format!("unexpected {}-byte body", body.len()),
                    });
                }
                Message::Shutdown
            }
            TAG_ERROR => Message::Error(String::from_utf8_lossy(body).into_owned()),
            TAG_STARTED => {
                let bytes: [u8; 4] = body.try_into().map_err(|_| DecodeError::Malformed {
                    what: "started",
                    reason: format!("body is {} bytes, expected 4", body.len()),
                })?;
                Message::Started(u32::from_be_bytes(bytes))
            }
            TAG_COPY_IN | TAG_COPY_OUT => {
                let path =
                    String::from_utf8(body.to_vec()).map_err(|_| DecodeError::Malformed {
                        what: "copy",
                        reason: "the path is not UTF-8".into(),
                    })?;
                if tag == TAG_COPY_IN {
                    Message::CopyIn(path)
                } else {
                    Message::CopyOut(path)
                }
            }
            TAG_ENTRY => Message::Entry(json_body("entry", body)?),
            TAG_RENEW => Message::Renew(json_body("renew", body)?),
            TAG_FS => Message::Fs(json_body("fs", body)?),
            TAG_INFO => Message::Info(json_body("info", body)?),
            TAG_FS_FAILED => Message::FsFailed(json_body("fs-failed", body)?),
            TAG_FS_EVENT => Message::FsEvent(json_body("fs-event", body)?),
            TAG_USAGE => Message::Usage(json_body("usage", body)?),
            TAG_DATA => Message::Data(body.to_vec()),
            TAG_END => {
                if !body.is_empty() {
                    return Err(DecodeError::Malformed {
                        what: "end",
                        reason: format!("unexpected {}-byte body", body.len()),
                    });
                }
                Message::End
            }
            TAG_SET_CLOCK => {
                let b: [u8; 8] = body.try_into().map_err(|_| DecodeError::Malformed {
                    what: "set-clock",
                    reason: format!("body is {} bytes, expected 8", body.len()),
                })?;
                Message::SetClock(u64::from_be_bytes(b))
            }
            TAG_RESIZE => {
                let b: [u8; 4] = body.try_into().map_err(|_| DecodeError::Malformed {
                    what: "resize",
                    reason: format!("body is {} bytes, expected 4", body.len()),
                })?;
                Message::Resize(WindowSize {
                    rows: u16::from_be_bytes([b[0], b[1]]),
                    cols: u16::from_be_bytes([b[2], b[3]]),
                })
            }
            other => return Err(DecodeError::UnknownTag(other)),
        })
    }
}
