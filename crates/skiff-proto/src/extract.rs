//! The receiving side of a copy, written for an untrusted sender.
//!
//! A guest answering `skiff cp VM:/path DIR` may send any entry stream. The
//! extractor holds it to what was asked for:
//! - every entry is the requested item or sits under it (a guest asked for
//!   `/tmp/proj` cannot send `.bashrc` or `.git/hooks/pre-commit`), and a
//!   copy holds one item;
//! - entries are walked from a descriptor of the destination directory with
//!   `openat(O_NOFOLLOW)`, one component at a time, so neither a symlink the
//!   copy made nor one swapped in while it runs (the destination may be a
//!   share the guest writes to) can redirect a write;
//! - only [`MODE_MASK`] bits are applied, to what this copy creates; an
//!   existing directory keeps its mode, an existing file is replaced by a
//!   new one (never written through, so a hard link cannot leak the bytes
//!   elsewhere), and a link replaces nothing but a link.

use crate::copy::{check_entry_path, io_err, resolve_dest, CopyError, Entry, EntryKind, MODE_MASK};
use crate::Message;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Writes received entries under a destination directory.
pub struct Extractor {
    /// The directory entries land in, opened once.
    root: OwnedFd,
    root_path: PathBuf,
    /// The name every entry's first component must have; learnt from the
    /// first entry when the receiver did not say.
    item: Option<String>,
    /// The name the item is written under, when the destination renames it.
    rename_item: Option<String>,
    /// Whether the item arrived, and whether it is a directory (only a
    /// directory may have entries under it).
    item_seen: Option<EntryKind>,
    /// The file being written and the bytes it still expects.
    current: Option<(File, PathBuf, u64)>,
    pub files: u64,
    pub bytes: u64,
}

impl Extractor {
    /// An extractor writing into `dest` (see [`resolve_dest`]). `item` is the
    /// name the sender must use, [`crate::copy::item_name`] of the path asked
    /// for; `None` takes the first entry's name, still allowing one item.
    pub fn new(dest: &Path, item: Option<&str>) -> Result<Extractor, CopyError> {
        let (root_path, rename_item) = resolve_dest(dest)?;
        let root = open_fd(
            None,
            root_path.as_path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| io_err(&root_path)(errno.into()))?;
        Ok(Extractor {
            root,
            root_path,
            item: item.map(str::to_owned),
            rename_item,
            item_seen: None,
            current: None,
            files: 0,
            bytes: 0,
        })
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
                if self.item_seen.is_none() {
                    return Err(CopyError::Protocol(
                        "the copy ended without an entry".into(),
                    ));
                }
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

    /// Check `path` against the item and return its components as written
    /// on disk (the first one renamed when the destination says so).
    fn components_of(&mut self, path: &str, kind: EntryKind) -> Result<Vec<String>, CopyError> {
        check_entry_path(path)?;
        let mut parts: Vec<String> = path.split('/').map(str::to_owned).collect();
        let expected = self.item.get_or_insert_with(|| parts[0].clone());
        if parts[0] != *expected {
            return Err(CopyError::OutsideItem {
                path: path.to_owned(),
                expected: expected.clone(),
            });
        }
        match (parts.len(), self.item_seen) {
            (1, None) => self.item_seen = Some(kind),
            (1, Some(_)) => return Err(CopyError::SecondItem(path.to_owned())),
            (_, Some(EntryKind::Dir)) => {}
            (_, _) => {
                return Err(CopyError::OutsideItem {
                    path: path.to_owned(),
                    expected: format!("{expected}, a directory,"),
                })
            }
        }
        if let Some(name) = &self.rename_item {
            parts[0] = name.clone();
        }
        Ok(parts)
    }

    /// Open the directory that holds `parts`' last component, walking from
    /// the root without following any symlink.
    fn open_parent(&self, entry: &str, parts: &[String]) -> Result<OwnedFd, CopyError> {
        let mut dir: Option<OwnedFd> = None;
        let mut shown = self.root_path.clone();
        for part in &parts[..parts.len() - 1] {
            shown.push(part);
            let at = dir.as_ref().unwrap_or(&self.root).as_raw_fd();
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            match open_fd(Some(at), part.as_str(), flags, Mode::empty()) {
                Ok(fd) => dir = Some(fd),
                // A symlink gives ELOOP or (with O_DIRECTORY) ENOTDIR; which
                // of the two it is decides the message.
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let dir_fd = dir.as_ref().unwrap_or(&self.root);
                    let is_link = stat_at(dir_fd, part)
                        .ok()
                        .flatten()
                        .is_some_and(|st| is(st, SFlag::S_IFLNK));
                    return Err(if is_link {
                        CopyError::ThroughSymlink(entry.to_owned())
                    } else {
                        CopyError::ParentNotDirectory(entry.to_owned())
                    });
                }
                Err(errno) => return Err(io_err(&shown)(errno.into())),
            }
        }
        match dir {
            Some(fd) => Ok(fd),
            None => self.root.try_clone().map_err(io_err(&self.root_path)),
        }
    }

    fn start(&mut self, e: Entry) -> Result<(), CopyError> {
        let parts = self.components_of(&e.path, e.kind)?;
        let parent = self.open_parent(&e.path, &parts)?;
        let name = parts[parts.len() - 1].as_str();
        let shown = parts.iter().fold(self.root_path.clone(), |p, c| p.join(c));
        let existing = stat_at(&parent, name).map_err(io_err(&shown))?;
        let mode = Mode::from_bits_truncate(e.mode & MODE_MASK);
        match e.kind {
            EntryKind::Dir => match existing {
                Some(st) if is(st, SFlag::S_IFDIR) => {}
                Some(_) => return Err(CopyError::WontReplace(e.path, "a non-directory is there")),
                None => {
                    mkdirat(Some(parent.as_raw_fd()), name, Mode::S_IRWXU)
                        .map_err(|errno| io_err(&shown)(errno.into()))?;
                    let flags =
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                    let fd = open_fd(Some(parent.as_raw_fd()), name, flags, Mode::empty())
                        .map_err(|errno| io_err(&shown)(errno.into()))?;
                    // Owner rwx stays so that the rest of the tree can land.
                    fchmod(fd.as_raw_fd(), mode | Mode::S_IRWXU)
                        .map_err(|errno| io_err(&shown)(errno.into()))?;
                }
            },
            EntryKind::File => {
                match existing {
                    Some(st) if is(st, SFlag::S_IFDIR) => {
                        return Err(CopyError::WontReplace(e.path, "a directory is there"))
                    }
                    Some(_) => unlink_at(&parent, name).map_err(io_err(&shown))?,
                    None => {}
                }
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let owner_rw = Mode::S_IRUSR | Mode::S_IWUSR;
                let fd = open_fd(Some(parent.as_raw_fd()), name, flags, owner_rw)
                    .map_err(|errno| io_err(&shown)(errno.into()))?;
                fchmod(fd.as_raw_fd(), mode).map_err(|errno| io_err(&shown)(errno.into()))?;
                self.files += 1;
                self.current = Some((File::from(fd), shown, e.size));
            }
            EntryKind::Symlink => {
                let target = e.target.as_deref().ok_or_else(|| {
                    CopyError::Protocol(format!("symlink {} without a target", e.path))
                })?;
                match existing {
                    Some(st) if is(st, SFlag::S_IFLNK) => {
                        unlink_at(&parent, name).map_err(io_err(&shown))?
                    }
                    Some(_) => {
                        return Err(CopyError::WontReplace(
                            e.path,
                            "something other than a link is there",
                        ))
                    }
                    None => {}
                }
                symlinkat(target, Some(parent.as_raw_fd()), name)
                    .map_err(|errno| io_err(&shown)(errno.into()))?;
            }
        }
        Ok(())
    }
}

fn is(st: FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == kind
}

fn open_fd<P: ?Sized + nix::NixPath>(
    dir: Option<i32>,
    path: &P,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let fd = openat(dir, path, flags, mode)?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_at(dir: &OwnedFd, name: &str) -> io::Result<Option<FileStat>> {
    match fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn unlink_at(dir: &OwnedFd, name: &str) -> io::Result<()> {
    Ok(unlinkat(
        Some(dir.as_raw_fd()),
        name,
        UnlinkatFlags::NoRemoveDir,
    )?)
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
