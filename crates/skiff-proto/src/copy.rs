//! File copy between host and guest: a tree travels as `Entry` frames, each
//! file's bytes as `Data` frames after its entry, then `End`.
//!
//! Both sides use the same [`send_tree`] and [`Extractor`]. The extractor
//! is written for an untrusted sender: entry paths must be relative and
//! plain (no `..`, no absolute paths), nothing is written through a symlink,
//! and a file gets exactly the bytes its entry announced.

use crate::{Message, MAX_CHUNK};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

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
    /// Permission bits (0o7777 at most).
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
    #[error("refusing entry {0:?}: paths must be relative and must not contain '..'")]
    BadPath(String),
    #[error("refusing entry {0:?}: it is inside a symlink")]
    ThroughSymlink(String),
    #[error("{0}")]
    Protocol(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Check an entry path: relative, non-empty, only normal components.
pub fn check_entry_path(path: &str) -> Result<(), CopyError> {
    // Checked on the raw string: Path::components would quietly normalise
    // "a//b/." to "a/b", and a sender has no reason to send either.
    let ok = !path.is_empty()
        && !path.contains('\0')
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

/// Send the file or tree at `src` (named by its last component) through
/// `send`, then `End`.
pub fn send_tree(
    src: &Path,
    send: &mut dyn FnMut(Message) -> io::Result<()>,
) -> Result<(), CopyError> {
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".to_owned());
    send_entry(src, &name, send)?;
    send(Message::End).map_err(io_err(src))
}

fn send_entry(
    path: &Path,
    rel: &str,
    send: &mut dyn FnMut(Message) -> io::Result<()>,
) -> Result<(), CopyError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o7777;
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

/// Writes received entries under a root directory.
pub struct Extractor {
    root: PathBuf,
    rename_top: Option<String>,
    /// The file being written and the bytes it still expects.
    current: Option<(File, PathBuf, u64)>,
    symlinks: HashSet<PathBuf>,
    pub files: u64,
    pub bytes: u64,
}

impl Extractor {
    pub fn new(dest: &Path) -> Result<Extractor, CopyError> {
        let (root, rename_top) = resolve_dest(dest)?;
        Ok(Extractor {
            root,
            rename_top,
            current: None,
            symlinks: HashSet::new(),
            files: 0,
            bytes: 0,
        })
    }

    fn target_of(&self, path: &str) -> Result<PathBuf, CopyError> {
        check_entry_path(path)?;
        let mut rel = PathBuf::new();
        for (i, c) in Path::new(path).components().enumerate() {
            match (i, &self.rename_top) {
                (0, Some(name)) => rel.push(name),
                _ => rel.push(c),
            }
        }
        // Never write through a symlink: not one this copy made, and not one
        // already on disk between the root and the entry.
        let mut walk = self.root.clone();
        let parents: Vec<_> = rel
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        for c in parents {
            walk.push(c);
            let is_link = self.symlinks.contains(&walk)
                || fs::symlink_metadata(&walk)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
            if is_link {
                return Err(CopyError::ThroughSymlink(path.to_owned()));
            }
        }
        Ok(self.root.join(rel))
    }

    /// Handle one message; returns true at `End`.
    pub fn accept(&mut self, msg: Message) -> Result<bool, CopyError> {
        match msg {
            Message::Entry(e) => {
                self.finish_file()?;
                self.start(e)?;
                Ok(false)
            }
            Message::Data(bytes) => {
                let Some((file, path, left)) = self.current.as_mut() else {
                    return Err(CopyError::Protocol("file data without a file entry".into()));
                };
                if bytes.len() as u64 > *left {
                    return Err(CopyError::Protocol(format!(
                        "{}: more data than announced",
                        path.display()
                    )));
                }
                file.write_all(&bytes).map_err(io_err(path))?;
                *left -= bytes.len() as u64;
                self.bytes += bytes.len() as u64;
                Ok(false)
            }
            Message::End => {
                self.finish_file()?;
                Ok(true)
            }
            other => Err(CopyError::Protocol(format!(
                "unexpected {} message in a copy",
                other.name()
            ))),
        }
    }

    fn finish_file(&mut self) -> Result<(), CopyError> {
        if let Some((_, path, left)) = self.current.take() {
            if left != 0 {
                return Err(CopyError::Protocol(format!(
                    "{}: {left} bytes missing",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    fn start(&mut self, e: Entry) -> Result<(), CopyError> {
        let target = self.target_of(&e.path)?;
        let mode = e.mode & 0o7777;
        match e.kind {
            EntryKind::Dir => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(CopyError::Io {
                            path: target.display().to_string(),
                            source: io::Error::new(
                                io::ErrorKind::AlreadyExists,
                                "exists and is not a directory",
                            ),
                        })
                    }
                    Err(_) => fs::create_dir(&target).map_err(io_err(&target))?,
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_err(&target))?;
            }
            EntryKind::File => {
                if fs::symlink_metadata(&target)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false)
                {
                    fs::remove_file(&target).map_err(io_err(&target))?;
                }
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .custom_flags(libc_o_nofollow())
                    .open(&target)
                    .map_err(io_err(&target))?;
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err(&target))?;
                self.files += 1;
                self.current = Some((file, target, e.size));
            }
            EntryKind::Symlink => {
                let link_target = e.target.ok_or_else(|| {
                    CopyError::Protocol(format!("symlink {} without a target", e.path))
                })?;
                if fs::symlink_metadata(&target).is_ok() {
                    fs::remove_file(&target).map_err(io_err(&target))?;
                }
                std::os::unix::fs::symlink(&link_target, &target).map_err(io_err(&target))?;
                self.symlinks.insert(target);
            }
        }
        Ok(())
    }
}

/// O_NOFOLLOW on Linux (all architectures skiff supports use this value).
const fn libc_o_nofollow() -> i32 {
    0o400000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(src: &Path) -> Vec<Message> {
        let mut out = Vec::new();
        send_tree(src, &mut |m| {
            out.push(m);
            Ok(())
        })
        .expect("send");
        out
    }

    #[test]
    fn a_tree_round_trips_with_bytes_modes_and_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("proj");
        fs::create_dir_all(src.join("sub")).expect("mkdir");
        fs::write(src.join("sub/data.bin"), vec![7u8; 200_000]).expect("write");
        fs::write(src.join("run.sh"), b"#!/bin/sh\n").expect("write");
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o751)).expect("chmod");
        std::os::unix::fs::symlink("run.sh", src.join("link")).expect("symlink");

        let dest = dir.path().join("out");
        fs::create_dir(&dest).expect("mkdir");
        let mut x = Extractor::new(&dest).expect("extractor");
        for m in collect(&src) {
            x.accept(m).expect("accept");
        }
        assert_eq!(
            fs::read(dest.join("proj/sub/data.bin")).expect("read"),
            vec![7u8; 200_000]
        );
        let mode = fs::metadata(dest.join("proj/run.sh"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o751);
        assert_eq!(
            fs::read_link(dest.join("proj/link")).expect("link"),
            PathBuf::from("run.sh")
        );
        assert_eq!(x.files, 2);
    }

    #[test]
    fn a_single_file_can_be_renamed_by_its_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.txt"), b"hello").expect("write");
        let mut x = Extractor::new(&dir.path().join("b.txt")).expect("extractor");
        for m in collect(&dir.path().join("a.txt")) {
            x.accept(m).expect("accept");
        }
        assert_eq!(fs::read(dir.path().join("b.txt")).expect("read"), b"hello");
    }

    #[test]
    fn hostile_entries_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let entry = |path: &str, kind, target: Option<&str>| {
            Message::Entry(Entry {
                path: path.into(),
                kind,
                mode: 0o644,
                size: 0,
                target: target.map(Into::into),
            })
        };
        for bad in ["../escape", "/etc/passwd", "a/../../x", "", "a//b/."] {
            let mut x = Extractor::new(dir.path()).expect("extractor");
            let r = x.accept(entry(bad, EntryKind::File, None));
            assert!(
                matches!(r, Err(CopyError::BadPath(_))),
                "{bad:?} accepted: {r:?}"
            );
        }
        // A symlink to outside, then a file "through" it.
        let mut x = Extractor::new(dir.path()).expect("extractor");
        x.accept(entry(
            "evil",
            EntryKind::Symlink,
            Some(&outside.path().display().to_string()),
        ))
        .expect("symlink itself is fine");
        let r = x.accept(entry("evil/owned", EntryKind::File, None));
        assert!(matches!(r, Err(CopyError::ThroughSymlink(_))), "{r:?}");
        assert!(
            fs::read_dir(outside.path()).expect("read").next().is_none(),
            "nothing written outside"
        );
        // More data than announced.
        let mut x = Extractor::new(dir.path()).expect("extractor");
        x.accept(entry("f", EntryKind::File, None)).expect("entry");
        assert!(matches!(
            x.accept(Message::Data(vec![1])),
            Err(CopyError::Protocol(_))
        ));
    }

    #[test]
    fn a_missing_source_is_a_clear_error() {
        let err = send_tree(Path::new("/nonexistent/x"), &mut |_| Ok(())).expect_err("missing");
        assert!(err.to_string().starts_with("/nonexistent/x: "), "{err}");
    }
}
