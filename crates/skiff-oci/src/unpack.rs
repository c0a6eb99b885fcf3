//! Applying an image layer (a tar stream) to a root directory, written for
//! layers nobody here made. Every path is resolved by the kernel beneath
//! the root with no symlink followed (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`): `../x`, `/etc/x` and `link/x` where `link` is a
//! symlink are refused, whatever the layers before made. Whiteouts
//! (`.wh.NAME`) delete what lower layers left; an opaque marker
//! (`.wh..wh..opq`) empties its directory of them.

use crate::OciError;
use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Deeper paths are refused (removal recurses once per level).
const MAX_DEPTH: usize = 256;

/// What one layer did, for progress and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
}

/// Apply the layer `layer` (its digest, for messages), read as a tar stream
/// from `tar`, to `root`. Ownership is kept when this process may chown.
pub fn apply_layer(root: &Path, layer: &str, tar: impl Read) -> Result<Applied, OciError> {
    let root_fd =
        open_dir_at(None, root).map_err(|e| OciError::io("open", root, std::io::Error::from(e)))?;
    let mut ctx = Layer {
        root: root_fd,
        root_path: root.to_owned(),
        layer: layer.to_owned(),
        chown: nix::unistd::geteuid().is_root(),
        made: HashSet::new(),
        applied: Applied::default(),
    };
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(|e| ctx.corrupt(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ctx.corrupt(e))?;
        ctx.entry(&mut entry)?;
    }
    Ok(ctx.applied)
}

struct Layer {
    root: OwnedFd,
    root_path: PathBuf,
    layer: String,
    chown: bool,
    /// Paths this layer wrote: an opaque marker hides only lower layers.
    made: HashSet<Vec<String>>,
    applied: Applied,
}

impl Layer {
    fn corrupt(&self, e: std::io::Error) -> OciError {
        OciError::CorruptLayer {
            layer: self.layer.clone(),
            why: e.to_string(),
        }
    }

    fn hostile(&self, path: &str, why: impl Into<String>) -> OciError {
        OciError::HostileLayer {
            layer: self.layer.clone(),
            path: path.to_owned(),
            why: why.into(),
        }
    }

    fn io(&self, path: &str, e: impl Into<std::io::Error>) -> OciError {
        OciError::io("write", &self.root_path.join(path), e.into())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), OciError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let parts = self.components(&raw, &shown)?;
        let Some((name, parents)) = parts.split_last() else {
            return Ok(()); // the root itself ("./"): keep the root as it is
        };
        self.applied.entries += 1;
        if name == OPAQUE || name.starts_with(WHITEOUT) {
            self.applied.whiteouts += 1;
            // A whiteout hides what is below; it makes nothing, not even
            // its parent.
            let Some(parent) = self.existing_parent(parents, &shown)? else {
                return Ok(());
            };
            if name == OPAQUE {
                return self.empty_lower(&parent, parents, &shown);
            }
            let hidden = &name[WHITEOUT.len()..];
            if matches!(hidden, "" | "." | "..") || hidden.contains('/') {
                return Err(self.hostile(&shown, "a whiteout of no single name"));
            }
            return remove_at(&parent, hidden).map_err(|e| self.io(&shown, e));
        }
        let parent = self.parent_dir(parents, &shown)?;
        let header = entry.header();
        let mode = header.mode().map_err(|e| self.corrupt(e))? & 0o7777;
        let (uid, gid) = (
            header.uid().map_err(|e| self.corrupt(e))?,
            header.gid().map_err(|e| self.corrupt(e))?,
        );
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();
        let existing = stat_at(&parent, name).map_err(|e| self.io(&shown, e))?;
        let is_dir = existing.is_some_and(|st| is(st, SFlag::S_IFDIR));
        if kind.is_dir() {
            if existing.is_some() && !is_dir {
                remove_at(&parent, name).map_err(|e| self.io(&shown, e))?;
            }
            if !is_dir {
                mkdirat(Some(parent.as_raw_fd()), name.as_str(), Mode::S_IRWXU)
                    .map_err(|e| self.io(&shown, e))?;
            }
            let dir = open_dir_at(Some(&parent), name).map_err(|e| self.io(&shown, e))?;
            self.own(&parent, name, uid, gid, &shown)?;
            // Unpacking as a user: the owner keeps rwx, or the next entry
            // (or removing the image) could not get in. Root needs no bits.
            let mode = if self.chown { mode } else { mode | 0o700 };
            fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(mode))
                .map_err(|e| self.io(&shown, e))?;
        } else {
            if existing.is_some() {
                remove_at(&parent, name).map_err(|e| self.io(&shown, e))?;
            }
            if kind.is_file() || kind == tar::EntryType::Continuous {
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
                let fd = open_at(&parent, name, flags, Mode::S_IRUSR | Mode::S_IWUSR)
                    .map_err(|e| self.io(&shown, e))?;
                let mut file = File::from(fd);
                let size = entry.size();
                let n = std::io::copy(entry, &mut file).map_err(|e| self.corrupt(e))?;
                if n != size {
                    return Err(self.corrupt(std::io::Error::other(format!(
                        "{shown} has {n} of its {size} bytes"
                    ))));
                }
                self.applied.bytes += n;
                self.own(&parent, name, uid, gid, &shown)?;
                // After chown, which clears set-id bits.
                fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode))
                    .map_err(|e| self.io(&shown, e))?;
                let t = TimeSpec::new(mtime as i64, 0);
                let _ = futimens(file.as_raw_fd(), &t, &t);
            } else if kind.is_symlink() {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.hostile(&shown, "a symlink without a target"))?;
                let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&target);
                symlinkat(target, Some(parent.as_raw_fd()), name.as_str())
                    .map_err(|e| self.io(&shown, e))?;
                self.own(&parent, name, uid, gid, &shown)?;
            } else if kind.is_hard_link() {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.hostile(&shown, "a hard link without a target"))?
                    .into_owned();
                let target_shown = format!(
                    "{shown} (a hard link to {})",
                    String::from_utf8_lossy(&target_raw)
                );
                let tparts = self.components(&target_raw, &target_shown)?;
                let Some((tname, tparents)) = tparts.split_last() else {
                    return Err(self.hostile(&shown, "a hard link to the root"));
                };
                let tdir = self
                    .existing_parent(tparents, &target_shown)?
                    .ok_or_else(|| self.hostile(&target_shown, "a hard link to nothing"))?;
                linkat(
                    Some(tdir.as_raw_fd()),
                    tname.as_str(),
                    Some(parent.as_raw_fd()),
                    name.as_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| self.io(&shown, e))?;
            } else {
                // Devices and FIFOs: a VM's /dev is the guest kernel's own;
                // nothing of the image's belongs there.
                return Ok(());
            }
        }
        self.made.insert(parts);
        Ok(())
    }

    /// The entry's path as components, refusing what leaves the root.
    fn components(&self, raw: &[u8], shown: &str) -> Result<Vec<String>, OciError> {
        if raw.first() == Some(&b'/') {
            return Err(self.hostile(shown, "an absolute path"));
        }
        let text = std::str::from_utf8(raw)
            .map_err(|_| self.hostile(shown, "a path that is not UTF-8"))?;
        let mut parts = Vec::new();
        for c in text.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(self.hostile(shown, "a path with `..`")),
                c => parts.push(c.to_owned()),
            }
        }
        if parts.len() > MAX_DEPTH {
            return Err(self.hostile(shown, format!("deeper than {MAX_DEPTH} directories")));
        }
        Ok(parts)
    }

    /// The directory holding an entry if it exists (None if not), reached
    /// as [`Layer::parent_dir`] reaches it.
    fn existing_parent(
        &self,
        parents: &[String],
        shown: &str,
    ) -> Result<Option<OwnedFd>, OciError> {
        let mut dir = self.root.try_clone().map_err(|e| self.io(shown, e))?;
        for p in parents {
            dir = match open_dir_at(Some(&dir), p) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(self.parent_error(shown, p, e)),
            };
        }
        Ok(Some(dir))
    }

    fn parent_error(&self, shown: &str, parent: &str, e: Errno) -> OciError {
        match e {
            Errno::ELOOP | Errno::EXDEV => {
                self.hostile(shown, format!("its parent {parent} is a symlink"))
            }
            Errno::ENOTDIR => {
                self.hostile(shown, format!("its parent {parent} is not a directory"))
            }
            e => self.io(shown, e),
        }
    }

    /// The directory holding an entry, made if missing, reached beneath the
    /// root without following symlinks.
    /// (A parent it makes counts as this layer's, for an opaque marker.)
    fn parent_dir(&mut self, parents: &[String], shown: &str) -> Result<OwnedFd, OciError> {
        let mut dir = self.root.try_clone().map_err(|e| self.io(shown, e))?;
        for (i, p) in parents.iter().enumerate() {
            dir = match open_dir_at(Some(&dir), p) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    mkdirat(
                        Some(dir.as_raw_fd()),
                        p.as_str(),
                        Mode::from_bits_truncate(0o755),
                    )
                    .map_err(|e| self.io(shown, e))?;
                    self.made.insert(parents[..=i].to_vec());
                    open_dir_at(Some(&dir), p).map_err(|e| self.io(shown, e))?
                }
                Err(e) => return Err(self.parent_error(shown, p, e)),
            };
        }
        Ok(dir)
    }

    /// An opaque directory: remove what lower layers put in it, down to
    /// the directories this layer declared again.
    fn empty_lower(&self, dir: &OwnedFd, at: &[String], shown: &str) -> Result<(), OciError> {
        let names = list_dir(dir).map_err(|e| self.io(shown, e))?;
        for name in names {
            let mut path = at.to_vec();
            path.push(name.clone());
            if !self.made.contains(&path) {
                remove_at(dir, &name).map_err(|e| self.io(shown, e))?;
            } else if let Ok(sub) = open_dir_at(Some(dir), &name) {
                self.empty_lower(&sub, &path, shown)?;
            }
        }
        Ok(())
    }

    fn own(
        &self,
        dir: &OwnedFd,
        name: &str,
        uid: u64,
        gid: u64,
        shown: &str,
    ) -> Result<(), OciError> {
        if !self.chown {
            return Ok(());
        }
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(self.hostile(shown, "an owner beyond 32 bits"));
        };
        fchownat(
            Some(dir.as_raw_fd()),
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io(shown, e))
    }
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS)
}

fn open_at(dir: &OwnedFd, name: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
    let fd = openat2(dir.as_raw_fd(), name, how(flags).mode(mode))?;
    // SAFETY: openat2 just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A directory beneath `dir` (or `path` itself from the working directory
/// when `dir` is None), symlinks refused.
fn open_dir_at<P: AsRef<Path>>(dir: Option<&OwnedFd>, path: P) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    match dir {
        Some(d) => open_at(d, &path.as_ref().to_string_lossy(), flags, Mode::empty()),
        None => {
            let fd = nix::fcntl::open(path.as_ref(), flags | OFlag::O_CLOEXEC, Mode::empty())?;
            // SAFETY: open just returned this descriptor; nothing else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    }
}

fn is(st: FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == kind
}

fn stat_at(dir: &OwnedFd, name: &str) -> Result<Option<FileStat>, Errno> {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn list_dir(dir: &OwnedFd) -> Result<Vec<String>, Errno> {
    let mut d = nix::dir::Dir::from_fd(nix::unistd::dup(dir.as_raw_fd())?)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Remove `name` in `dir`, a whole tree if it is a directory; nothing there
/// is fine (a whiteout of what no layer made).
fn remove_at(dir: &OwnedFd, name: &str) -> Result<(), Errno> {
    match stat_at(dir, name)? {
        None => Ok(()),
        Some(st) if is(st, SFlag::S_IFDIR) => {
            let sub = open_dir_at(Some(dir), name)?;
            for child in list_dir(&sub)? {
                remove_at(&sub, &child)?;
            }
            unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)
        }
        Some(_) => unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir),
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
