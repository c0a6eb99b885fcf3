//! File operations for the host's file APIs (`Message::Fs`, see
//! `skiff_proto::fs`): done here in the guest with the guest's own view of
//! its files. The agent does them as root; the user a call names decides
//! where relative paths land (their home) and who owns what is created.

use crate::exec::{send, FrameSink};
use skiff_proto::fs::{FileInfo, FileKind, FsCall, FsError, FsErrorKind, FsOp};
use skiff_proto::{Message, MAX_CHUNK};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The most entries one `list` answers (a deeper listing must ask for less).
const MAX_LIST: usize = 100_000;

/// Who a call acts as.
struct Actor {
    /// None: root, whose files need no chown.
    ids: Option<(u32, u32)>,
    home: PathBuf,
}

fn actor(user: Option<&str>) -> Result<Actor, FsError> {
    let Some(name) = user else {
        return Ok(Actor {
            ids: None,
            home: PathBuf::from("/root"),
        });
    };
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let u = crate::users::lookup(name, &passwd).ok_or_else(|| {
        FsError::new(
            FsErrorKind::UnknownUser,
            format!("no user {name:?} in the guest (not in /etc/passwd, not a UID)"),
        )
    })?;
    Ok(Actor {
        ids: (u.uid != 0).then_some((u.uid, u.gid)),
        home: PathBuf::from(u.home),
    })
}

/// `~`, `~/x` and relative paths are under the user's home.
fn resolve(actor: &Actor, path: &str) -> PathBuf {
    if path.is_empty() || path == "~" {
        return actor.home.clone();
    }
    if let Some(rest) = path.strip_prefix("~/") {
        return actor.home.join(rest);
    }
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_owned()
    } else {
        actor.home.join(p)
    }
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Names of users and groups by id, from the guest's files.
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    pub fn load() -> Names {
        let read = |f: &str| {
            fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut it = l.split(':');
                    let name = it.next()?.to_owned();
                    let id = it.nth(1)?.parse().ok()?;
                    Some((id, name))
                })
                .collect()
        };
        Names {
            users: read("/etc/passwd"),
            groups: read("/etc/group"),
        }
    }

    fn user(&self, id: u32) -> String {
        self.users
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    fn group(&self, id: u32) -> String {
        self.groups
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }
}

/// What `path` is (itself, not a symlink's target).
pub fn info(path: &Path, names: &Names) -> Result<FileInfo, FsError> {
    let meta = fs::symlink_metadata(path).map_err(|e| FsError::io(&shown(path), &e))?;
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    let target = ft
        .is_symlink()
        .then(|| fs::read_link(path).ok().map(|t| shown(&t)))
        .flatten();
    Ok(FileInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        path: shown(path),
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        modified_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
        target,
    })
}

/// Make `dir` and its missing parents, each the actor's.
fn make_dirs(actor: &Actor, dir: &Path) -> Result<(), FsError> {
    let mut missing = Vec::new();
    let mut at = dir;
    while fs::symlink_metadata(at).is_err() {
        missing.push(at.to_owned());
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    fs::create_dir_all(dir).map_err(|e| FsError::io(&shown(dir), &e))?;
    for d in missing.iter().rev() {
        give(actor, d)?;
    }
    Ok(())
}

fn give(actor: &Actor, path: &Path) -> Result<(), FsError> {
    if let Some((uid, gid)) = actor.ids {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| FsError::io(&shown(path), &e))?;
    }
    Ok(())
}

fn fail(sink: &FrameSink, e: FsError) {
    let _ = send(sink, &Message::FsFailed(e));
}

/// A new file beside the target that a write goes to until it is complete:
/// made with O_EXCL and O_NOFOLLOW under a random name, so that nothing a
/// guest user planted there (a symlink to /etc/shadow) is written through,
/// and two writes of one file never share it.
fn create_temp(dir: &Path, name: &str) -> Result<(File, PathBuf), FsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut last = None;
    for _ in 0..8 {
        let mut random = [0u8; 8];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(|e| FsError::io("/dev/urandom", &e))?;
        let tag: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let temp = dir.join(format!(".{name}.{tag}{WRITE_TEMP_MARK}"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&temp)
        {
            Ok(f) => return Ok((f, temp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(FsError::io(&shown(&temp), &e)),
        }
    }
    let e = last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AlreadyExists));
    Err(FsError::io(&shown(dir), &e))
}

const WRITE_TEMP_MARK: &str = ".skiff-writing";

/// Whether `name` is where a write is under way (watches do not show it).
pub fn is_write_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(WRITE_TEMP_MARK)
}

/// A write the host is streaming: its bytes go to a file beside the
/// target, which replaces the target at the end.
pub struct Writing {
    file: Option<File>,
    temp: PathBuf,
    target: PathBuf,
    /// Kept to answer at the end: the first error (the rest is drained).
    failed: Option<FsError>,
}

impl Writing {
    /// Bytes for the file.
    pub fn data(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.write_all(bytes) {
                self.failed = Some(FsError::io(&shown(&self.target), &e));
            }
        }
    }

    /// The end of the bytes: put the file in place and say what it is.
    pub fn finish(mut self, sink: &FrameSink) {
        drop(self.file.take());
        if let Some(e) = self.failed.take() {
            let _ = fs::remove_file(&self.temp);
            return fail(sink, e);
        }
        let placed =
            fs::rename(&self.temp, &self.target).map_err(|e| FsError::io(&shown(&self.target), &e));
        match placed.and_then(|()| info(&self.target, &Names::load())) {
            Ok(i) => {
                let _ = send(sink, &Message::Info(i));
            }
            Err(e) => {
                let _ = fs::remove_file(&self.temp);
                fail(sink, e);
            }
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        // Cut short (the host went away): nothing half-written stays.
        if self.file.is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

fn start_write(actor: &Actor, target: PathBuf) -> Result<Writing, FsError> {
    if target.is_dir() {
        return Err(FsError::new(
            FsErrorKind::IsADirectory,
            format!("{} is a directory", shown(&target)),
        ));
    }
    let parent = target
        .parent()
        .ok_or_else(|| FsError::new(FsErrorKind::Invalid, "cannot write to /"))?
        .to_owned();
    make_dirs(actor, &parent)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A file that is replaced keeps its mode; a new one is 0644.
    let mode = fs::metadata(&target).map_or(0o644, |m| m.mode() & 0o7777);
    let (file, temp) = create_temp(&parent, &name)?;
    let _ = file.set_permissions(fs::Permissions::from_mode(mode));
    if let Some((uid, gid)) = actor.ids {
        let _ = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
    }
    Ok(Writing {
        file: Some(file),
        temp,
        target,
        failed: None,
    })
}

/// A write as root, for tests elsewhere in the agent.
#[cfg(test)]
pub fn start_write_for_test(target: &Path) -> Writing {
    let root = Actor {
        ids: None,
        home: PathBuf::from("/root"),
    };
    match start_write(&root, target.to_owned()) {
        Ok(w) => w,
        Err(e) => panic!("cannot start a write: {e:?}"),
    }
}

/// Carry out `call`; a write returns its state, which the connection feeds
/// with the host's `Data` until `End`.
pub fn handle(
    call: FsCall,
    sink: &FrameSink,
    watches: &mut crate::watch::Watches,
) -> Option<Writing> {
    let actor = match actor(call.user.as_deref()) {
        Ok(a) => a,
        Err(e) => {
            fail(sink, e);
            return None;
        }
    };
    let done = match call.op {
        FsOp::Stat { path } => info(&resolve(&actor, &path), &Names::load()).map(Some),
        FsOp::List { path, depth } => {
            list(&resolve(&actor, &path), depth.max(1), sink).map(|()| None)
        }
        FsOp::MakeDir { path } => make_dir(&actor, &resolve(&actor, &path)).map(Some),
        FsOp::Rename { from, to } => {
            rename(&actor, &resolve(&actor, &from), &resolve(&actor, &to)).map(Some)
        }
        FsOp::Remove { path } => remove(&resolve(&actor, &path)).map(|()| {
            let _ = send(sink, &Message::End);
            None
        }),
        FsOp::Read { path } => read(&resolve(&actor, &path), sink).map(|()| None),
        FsOp::Write { path } => match start_write(&actor, resolve(&actor, &path)) {
            Ok(w) => return Some(w),
            Err(e) => Err(e),
        },
        FsOp::Watch { path, recursive } => {
            let dir = resolve(&actor, &path);
            watches.start(&dir, recursive, sink.clone()).map(Some)
        }
        FsOp::Usage { path } => crate::usage::read(&resolve(&actor, &path)).map(|u| {
            let _ = send(sink, &Message::Usage(u));
            None
        }),
    };
    match done {
        Ok(Some(i)) => {
            let _ = send(sink, &Message::Info(i));
        }
        Ok(None) => {}
        Err(e) => fail(sink, e),
    }
    None
}

fn make_dir(actor: &Actor, dir: &Path) -> Result<FileInfo, FsError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            return Err(FsError::new(
                FsErrorKind::AlreadyExists,
                format!("directory {} already exists", shown(dir)),
            ))
        }
        Ok(_) => {
            return Err(FsError::new(
                FsErrorKind::NotADirectory,
                format!("{} exists and is not a directory", shown(dir)),
            ))
        }
        Err(_) => {}
    }
    make_dirs(actor, dir)?;
    info(dir, &Names::load())
}

fn rename(actor: &Actor, from: &Path, to: &Path) -> Result<FileInfo, FsError> {
    fs::symlink_metadata(from).map_err(|e| FsError::io(&shown(from), &e))?;
    if let Some(parent) = to.parent() {
        make_dirs(actor, parent)?;
    }
    fs::rename(from, to).map_err(|e| FsError::io(&shown(to), &e))?;
    info(to, &Names::load())
}

fn remove(path: &Path) -> Result<(), FsError> {
    let removed = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    removed.map_err(|e| FsError::io(&shown(path), &e))?;
    Ok(())
}

fn read(path: &Path, sink: &FrameSink) -> Result<(), FsError> {
    let mut file = File::open(path).map_err(|e| FsError::io(&shown(path), &e))?;
    let meta = file.metadata().map_err(|e| FsError::io(&shown(path), &e))?;
    if meta.is_dir() {
        return Err(FsError::new(
            FsErrorKind::IsADirectory,
            format!("{} is a directory", shown(path)),
        ));
    }
    let mut i = info(path, &Names::load())?;
    // The file a symlink names: what is sent.
    i.size = meta.len();
    let _ = send(sink, &Message::Info(i));
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(FsError::io(&shown(path), &e)),
        };
        if send(sink, &Message::Data(buf[..n].to_vec())).is_err() {
            return Ok(()); // the host went away
        }
    }
    let _ = send(sink, &Message::End);
    Ok(())
}

/// Each entry `depth` levels down, breadth first, then `End`.
fn list(dir: &Path, depth: u32, sink: &FrameSink) -> Result<(), FsError> {
    let meta = fs::metadata(dir).map_err(|e| FsError::io(&shown(dir), &e))?;
    if !meta.is_dir() {
        return Err(FsError::new(
            FsErrorKind::NotADirectory,
            format!("{} is not a directory", shown(dir)),
        ));
    }
    let names = Names::load();
    let mut level = vec![dir.to_owned()];
    let mut sent = 0usize;
    for _ in 0..depth {
        let mut next = Vec::new();
        for d in &level {
            let Ok(entries) = fs::read_dir(d) else {
                continue; // unreadable below the top: skipped, as `ls -R`
            };
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                let Ok(i) = info(&p, &names) else { continue };
                sent += 1;
                if sent > MAX_LIST {
                    return Err(FsError::new(
                        FsErrorKind::Invalid,
                        format!(
                            "{} holds more than {MAX_LIST} entries at this depth; list less deep",
                            shown(dir)
                        ),
                    ));
                }
                if i.kind == FileKind::Dir {
                    next.push(p);
                }
                if send(sink, &Message::Info(i)).is_err() {
                    return Ok(());
                }
            }
        }
        level = next;
    }
    let _ = send(sink, &Message::End);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_actor(home: &Path) -> Actor {
        Actor {
            ids: None,
            home: home.to_owned(),
        }
    }

    #[test]
    fn paths_resolve_under_the_home_unless_absolute() {
        let a = root_actor(Path::new("/home/u"));
        assert_eq!(resolve(&a, "~"), PathBuf::from("/home/u"));
        assert_eq!(resolve(&a, ""), PathBuf::from("/home/u"));
        assert_eq!(resolve(&a, "~/a/b"), PathBuf::from("/home/u/a/b"));
        assert_eq!(resolve(&a, "notes.txt"), PathBuf::from("/home/u/notes.txt"));
        assert_eq!(resolve(&a, "/etc/hosts"), PathBuf::from("/etc/hosts"));
    }

    #[test]
    fn make_dir_rename_and_remove_do_what_their_names_say() {
        let tmp = tempfile::tempdir().expect("tmp");
        let a = root_actor(tmp.path());
        let deep = tmp.path().join("a/b/c");
        assert_eq!(make_dir(&a, &deep).expect("mkdir -p").kind, FileKind::Dir);
        let again = make_dir(&a, &deep).expect_err("exists");
        assert_eq!(again.kind, FsErrorKind::AlreadyExists);
        fs::write(deep.join("f"), b"x").expect("write");
        let moved = rename(&a, &deep.join("f"), &tmp.path().join("new/dir/g")).expect("mv");
        assert_eq!((moved.name.as_str(), moved.size), ("g", 1));
        let gone = rename(&a, &deep.join("f"), &tmp.path().join("h")).expect_err("moved already");
        assert_eq!(gone.kind, FsErrorKind::NotFound);
        remove(&tmp.path().join("a")).expect("rm -rf");
        assert!(!tmp.path().join("a").exists());
        remove(&tmp.path().join("a")).expect("a missing path is no error");
    }

    #[test]
    fn a_write_never_writes_through_a_planted_symlink() {
        let tmp = tempfile::tempdir().expect("tmp");
        let secret = tmp.path().join("secret");
        fs::write(&secret, b"root only").expect("write");
        let dir = tmp.path().join("pub");
        fs::create_dir(&dir).expect("mkdir");
        // Whatever name a temporary gets, one that exists is not opened.
        std::os::unix::fs::symlink(&secret, dir.join(".f.planted.skiff-writing")).expect("ln");
        let a = root_actor(tmp.path());
        let mut w = start_write(&a, dir.join("f")).expect("start");
        w.data(b"new");
        let (sink, _) = crate::exec::test_sink();
        w.finish(&sink);
        assert_eq!(fs::read(&secret).expect("read"), b"root only");
        assert_eq!(fs::read(dir.join("f")).expect("read"), b"new");
        let (f, temp) = create_temp(&dir, "g").expect("temp");
        drop(f);
        assert!(is_write_temp(
            &temp.file_name().expect("name").to_string_lossy()
        ));
        assert_eq!(fs::metadata(&temp).expect("meta").mode() & 0o777, 0o600);
    }

    #[test]
    fn a_write_replaces_the_file_only_at_its_end_and_keeps_its_mode() {
        let tmp = tempfile::tempdir().expect("tmp");
        let a = root_actor(tmp.path());
        let target = tmp.path().join("sub/f.txt");
        let mut w = start_write(&a, target.clone()).expect("start");
        w.data(b"hello ");
        w.data(b"world");
        assert!(!target.exists(), "not in place before the end");
        let (sink, frames) = crate::exec::test_sink();
        w.finish(&sink);
        assert_eq!(fs::read(&target).expect("read"), b"hello world");
        assert!(matches!(frames().last(), Some(Message::Info(i)) if i.size == 11));
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).expect("chmod");
        let w = start_write(&a, target.clone()).expect("again");
        drop(w);
        assert_eq!(
            fs::read(&target).expect("read"),
            b"hello world",
            "a cut-short write leaves the old file"
        );
        assert_eq!(
            fs::read_dir(target.parent().expect("parent"))
                .expect("ls")
                .count(),
            1,
            "and no temp file"
        );
        let mut w = start_write(&a, target.clone()).expect("third");
        w.data(b"new");
        w.finish(&sink);
        assert_eq!(fs::metadata(&target).expect("meta").mode() & 0o777, 0o600);
        let dir = start_write(&a, tmp.path().join("sub"))
            .err()
            .expect("a directory");
        assert_eq!(dir.kind, FsErrorKind::IsADirectory);
    }
}
