//! File operations the agent does itself, in the guest, for the host's
//! file APIs (skiff's and E2B's): stat, list with depth, mkdir -p, rename,
//! remove, streamed read and write of any size, and directory watches.
//!
//! The host sends `Fs(FsCall)`; the agent answers:
//! - `stat`, `make_dir`, `rename`: one `Info`, or `FsFailed`;
//! - `list`: `Info` per entry, then `End`;
//! - `remove`: `End`;
//! - `read`: `Info` (of the file), its bytes as `Data`, then `End`;
//! - `write`: nothing until the host's `Data` frames and `End`, then the
//!   written file's `Info`;
//! - `watch`: `Info` of the directory, then an `FsEvent` per change, until
//!   the host closes the connection;
//! - `usage`: one `Usage` (the guest's CPU, memory and the file system
//!   holding the path).
//!
//! Any of them may end with `FsFailed` instead.

use serde::{Deserialize, Serialize};

/// One file operation, as a user of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsCall {
    /// Done as this user: a relative path is under their home, and what
    /// is created is theirs. None: root.
    #[serde(default)]
    pub user: Option<String>,
    pub op: FsOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum FsOp {
    /// The item itself (a symlink is not followed).
    Stat {
        path: String,
    },
    /// What a directory holds, `depth` levels down (1: its entries).
    List {
        path: String,
        depth: u32,
    },
    /// A directory and its missing parents.
    MakeDir {
        path: String,
    },
    /// `from` moved to `to`, whose missing parents are made.
    Rename {
        from: String,
        to: String,
    },
    /// The item and all it holds; a missing one is no error.
    Remove {
        path: String,
    },
    Read {
        path: String,
    },
    /// Replace (or create) a file with the bytes that follow; its missing
    /// parents are made.
    Write {
        path: String,
    },
    Watch {
        path: String,
        recursive: bool,
    },
    /// How busy the guest is, and how full the file system holding `path`.
    Usage {
        path: String,
    },
}

/// The guest's own counters, as its kernel gives them: a host turns two
/// of them into a CPU share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestUsage {
    /// Online CPUs.
    pub cpus: u32,
    /// Clock ticks since boot, all CPUs: busy, and in all.
    pub cpu_busy_ticks: u64,
    pub cpu_total_ticks: u64,
    /// Bytes (`MemTotal`, `MemAvailable`, `Cached` of /proc/meminfo).
    pub mem_total: u64,
    pub mem_available: u64,
    pub mem_cached: u64,
    /// Bytes of the file system holding the path: its size, and in use.
    pub disk_total: u64,
    pub disk_used: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// What the guest says a file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInfo {
    /// The last component of `path`.
    pub name: String,
    /// Absolute.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// The permission bits (0o7777 of `st_mode`).
    pub mode: u32,
    /// User and group names, or their numbers where the guest has none.
    pub owner: String,
    pub group: String,
    /// Last modification, in nanoseconds since 1970.
    pub modified_ns: i64,
    /// Where a symlink points.
    #[serde(default)]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsErrorKind {
    NotFound,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    PermissionDenied,
    NoSpace,
    /// The request itself is wrong (an empty path).
    Invalid,
    /// The user the call names is not in the guest.
    UnknownUser,
    Other,
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsError {
    pub kind: FsErrorKind,
    pub message: String,
}

impl FsError {
    pub fn new(kind: FsErrorKind, message: impl Into<String>) -> FsError {
        FsError {
            kind,
            message: message.into(),
        }
    }

    /// From an error of the guest's file system, at `path`.
    pub fn io(path: &str, e: &std::io::Error) -> FsError {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => FsErrorKind::NotFound,
            K::AlreadyExists => FsErrorKind::AlreadyExists,
            K::PermissionDenied => FsErrorKind::PermissionDenied,
            // ENOTDIR, EISDIR, ENOSPC and EDQUOT (Linux's numbers).
            _ => match e.raw_os_error() {
                Some(20) => FsErrorKind::NotADirectory,
                Some(21) => FsErrorKind::IsADirectory,
                Some(28) | Some(122) => FsErrorKind::NoSpace,
                _ => FsErrorKind::Other,
            },
        };
        FsError::new(kind, format!("{path}: {e}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsEventKind {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
}

/// A change under a watched directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsEvent {
    /// Relative to the watched directory.
    pub name: String,
    pub kind: FsEventKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_what_the_host_tells_apart() {
        let e = std::io::Error::from_raw_os_error(20);
        assert_eq!(FsError::io("/a/b", &e).kind, FsErrorKind::NotADirectory);
        let e = std::io::Error::from_raw_os_error(2);
        let err = FsError::io("/gone", &e);
        assert_eq!(err.kind, FsErrorKind::NotFound);
        assert!(err.message.starts_with("/gone: "), "{}", err.message);
        let e = std::io::Error::from_raw_os_error(28);
        assert_eq!(FsError::io("/f", &e).kind, FsErrorKind::NoSpace);
    }

    #[test]
    fn calls_read_as_tagged_json() {
        let call = FsCall {
            user: Some("user".into()),
            op: FsOp::List {
                path: "/home/user".into(),
                depth: 2,
            },
        };
        let text = serde_json::to_string(&call).expect("json");
        assert_eq!(
            text,
            r#"{"user":"user","op":{"op":"list","path":"/home/user","depth":2}}"#
        );
        assert_eq!(serde_json::from_str::<FsCall>(&text).expect("back"), call);
        assert!(serde_json::from_str::<FsCall>(r#"{"op":{"op":"format_disk"}}"#).is_err());
    }
}
