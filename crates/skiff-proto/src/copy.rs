//! File copy between host and guest: a tree travels as `Entry` frames, each
//! file's bytes as `Data` frames after its entry, then `End`.
//!
//! Both sides use the same [`send_tree`] and [`Extractor`]. The extractor
//! is written for an untrusted sender (see `extract.rs`): every entry sits
//! under the one item asked for, nothing is written through a symlink or
//! outside the destination, modes lose setuid, setgid and sticky bits, and a
//! file gets exactly the bytes its entry announced.

use crate::{Message, MAX_CHUNK};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

pub use crate::extract::Extractor;

/// Permission bits a copy keeps: read, write and execute for owner, group
/// and others. Setuid, setgid and sticky bits never travel.
pub const MODE_MASK: u32 = 0o777;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One item of a copied tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative, `/`-separated; its first component is the copied item's name.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits; only [`MODE_MASK`] of them are applied.
    pub mode: u32,
    /// File size in bytes (0 for others).
    pub size: u64,
    /// Where a symlink points.
    #[serde(default)]
    pub target: Option<String>,
}

/// Errors of a copy, with what and where.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("refusing entry {0:?}: paths must be relative, without '..' or control characters")]
    BadPath(String),
    #[error("refusing entry {0:?}: it is inside a symlink")]
    ThroughSymlink(String),
    #[error("refusing entry {0:?}: a part of its path on the host is not a directory")]
    ParentNotDirectory(String),
    #[error("refusing entry {path:?}: only {expected:?}, the item asked for, and what is inside it may be sent")]
    OutsideItem { path: String, expected: String },
    #[error("refusing entry {0:?}: a copy holds one item, and this is a second one")]
    SecondItem(String),
    #[error("refusing entry {0:?}: {1}")]
    WontReplace(String, &'static str),
    #[error("{0}")]
    Protocol(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Check an entry path: relative, non-empty, only normal components.
pub fn check_entry_path(path: &str) -> Result<(), CopyError> {
    // Checked on the raw string: Path::components would quietly normalise
    // "a//b/." to "a/b", and a sender has no reason to send either.
    // Control characters are refused too: the path is printed in errors,
    // and a guest must not put terminal escapes on the user's screen.
    let ok = !path.is_empty()
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(CopyError::BadPath(path.to_owned()))
    }
}

/// The name a copied item travels under: the last component of its path
/// ("root" for `/`). The receiver computes it from the path it asked for
/// and refuses entries under any other name.
pub fn item_name(src: &Path) -> String {
    src.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".to_owned())
}

/// Send the file or tree at `src` (named by [`item_name`]) through `send`,
/// then `End`.
pub fn send_tree(
    src: &Path,
    send: &mut dyn FnMut(Message) -> io::Result<()>,
) -> Result<(), CopyError> {
    send_entry(src, &item_name(src), send)?;
    send(Message::End).map_err(io_err(src))
}

fn send_entry(
    path: &Path,
    rel: &str,
    send: &mut dyn FnMut(Message) -> io::Result<()>,
) -> Result<(), CopyError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & MODE_MASK;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io_err(path))?;
        let entry = Entry {
            path: rel.to_owned(),
            kind: EntryKind::Symlink,
            mode,
            size: 0,
            target: Some(target.to_string_lossy().into_owned()),
        };
        return send(Message::Entry(entry)).map_err(io_err(path));
    }
    if ft.is_dir() {
        send(Message::Entry(Entry {
            path: rel.to_owned(),
            kind: EntryKind::Dir,
            mode,
            size: 0,
            target: None,
        }))
        .map_err(io_err(path))?;
        let mut children: Vec<_> = fs::read_dir(path)
            .map_err(io_err(path))?
            .filter_map(Result::ok)
            .collect();
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let child_rel = format!("{rel}/{}", child.file_name().to_string_lossy());
            send_entry(&child.path(), &child_rel, send)?;
        }
        return Ok(());
    }
    if !ft.is_file() {
        return Ok(()); // sockets, devices, fifos are not copied
    }
    let mut file = File::open(path).map_err(io_err(path))?;
    send(Message::Entry(Entry {
        path: rel.to_owned(),
        kind: EntryKind::File,
        mode,
        size: meta.len(),
        target: None,
    }))
    .map_err(io_err(path))?;
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut left = meta.len();
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want]).map_err(io_err(path))?;
        if n == 0 {
            return Err(CopyError::Protocol(format!(
                "{} shrank while it was copied",
                path.display()
            )));
        }
        send(Message::Data(buf[..n].to_vec())).map_err(io_err(path))?;
        left -= n as u64;
    }
    Ok(())
}

/// Where entries go: `dest` if it is an existing directory (the tree lands
/// inside it under its own name), else `dest` itself (the top entry is
/// renamed to it, and its parent must exist).
pub fn resolve_dest(dest: &Path) -> Result<(PathBuf, Option<String>), CopyError> {
    if fs::metadata(dest).map(|m| m.is_dir()).unwrap_or(false) {
        return Ok((dest.to_owned(), None));
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(CopyError::Io {
            path: parent.display().to_string(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| CopyError::BadPath(dest.display().to_string()))?;
    Ok((parent.to_owned(), Some(name)))
}
