//! Directory watches (`FsOp::Watch`): inotify in the guest, each change
//! sent to the host as an `FsEvent` until the connection closes.

use crate::exec::{send, FrameSink};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use skiff_proto::fs::{FileInfo, FsError, FsErrorKind, FsEvent, FsEventKind};
use skiff_proto::Message;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How often a watch looks whether its connection is gone.
const POLL_MS: u16 = 200;
/// Directories one recursive watch follows at most.
const MAX_DIRS: usize = 8192;

/// The watches of one connection; they end when it does.
#[derive(Default)]
pub struct Watches {
    stops: Vec<Arc<AtomicBool>>,
}

impl Drop for Watches {
    fn drop(&mut self) {
        for s in &self.stops {
            s.store(true, Ordering::SeqCst);
        }
    }
}

fn flags() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_ONLYDIR
}

fn watch_err(dir: &Path, e: nix::Error) -> FsError {
    FsError::io(&dir.display().to_string(), &std::io::Error::from(e))
}

/// What a change is, by its inotify mask; None for what is not reported.
fn kind_of(mask: AddWatchFlags) -> Option<FsEventKind> {
    if mask.contains(AddWatchFlags::IN_CREATE) || mask.contains(AddWatchFlags::IN_MOVED_TO) {
        Some(FsEventKind::Create)
    } else if mask.contains(AddWatchFlags::IN_MODIFY) {
        Some(FsEventKind::Write)
    } else if mask.contains(AddWatchFlags::IN_DELETE) {
        Some(FsEventKind::Remove)
    } else if mask.contains(AddWatchFlags::IN_MOVED_FROM) {
        Some(FsEventKind::Rename)
    } else if mask.contains(AddWatchFlags::IN_ATTRIB) {
        Some(FsEventKind::Chmod)
    } else {
        None
    }
}

struct Watcher {
    inotify: Inotify,
    /// Each watched directory, relative to the top.
    dirs: HashMap<WatchDescriptor, PathBuf>,
    top: PathBuf,
    recursive: bool,
}

impl Watcher {
    fn add(&mut self, rel: PathBuf) -> Result<(), FsError> {
        if self.dirs.len() >= MAX_DIRS {
            return Ok(()); // beyond the cap, deeper changes go unseen
        }
        let dir = self.top.join(&rel);
        let wd = self
            .inotify
            .add_watch(&dir, flags())
            .map_err(|e| watch_err(&dir, e))?;
        self.dirs.insert(wd, rel.clone());
        if self.recursive {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Ok(());
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = self.add(rel.join(e.file_name()));
                }
            }
        }
        Ok(())
    }
}

impl Watches {
    /// Watch `dir`; its info once the watch is in place.
    pub fn start(
        &mut self,
        dir: &Path,
        recursive: bool,
        sink: FrameSink,
    ) -> Result<FileInfo, FsError> {
        let info = crate::files::info(dir, &crate::files::Names::load())?;
        if !dir.is_dir() {
            return Err(FsError::new(
                FsErrorKind::NotADirectory,
                format!("{} is not a directory", dir.display()),
            ));
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| watch_err(dir, e))?;
        let mut w = Watcher {
            inotify,
            dirs: HashMap::new(),
            top: dir.to_owned(),
            recursive,
        };
        w.add(PathBuf::new())?;
        let stop = Arc::new(AtomicBool::new(false));
        self.stops.push(stop.clone());
        std::thread::spawn(move || follow(w, &sink, &stop));
        Ok(info)
    }
}

fn follow(mut w: Watcher, sink: &FrameSink, stop: &AtomicBool) {
    // Renames out of a write's temporary file, by cookie: the file they
    // complete is reported as created and written, the temporary never.
    let mut completing = std::collections::HashSet::new();
    while !stop.load(Ordering::SeqCst) {
        let ready = {
            let mut fds = [PollFd::new(w.inotify.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(POLL_MS)).unwrap_or(0)
        };
        if ready == 0 {
            continue;
        }
        let Ok(events) = w.inotify.read_events() else {
            continue;
        };
        for ev in events {
            let Some(rel) = w.dirs.get(&ev.wd).cloned() else {
                continue;
            };
            let Some(name) = ev.name else { continue };
            if crate::files::is_write_temp(&name.to_string_lossy()) {
                if ev.mask.contains(AddWatchFlags::IN_MOVED_FROM) {
                    completing.insert(ev.cookie);
                }
                continue;
            }
            let rel = rel.join(&name);
            if w.recursive
                && ev.mask.contains(AddWatchFlags::IN_ISDIR)
                && (ev.mask.contains(AddWatchFlags::IN_CREATE)
                    || ev.mask.contains(AddWatchFlags::IN_MOVED_TO))
            {
                let _ = w.add(rel.clone());
            }
            let Some(kind) = kind_of(ev.mask) else {
                continue;
            };
            let mut kinds = vec![kind];
            if ev.mask.contains(AddWatchFlags::IN_MOVED_TO) && completing.remove(&ev.cookie) {
                kinds.push(FsEventKind::Write);
            }
            for kind in kinds {
                let event = FsEvent {
                    name: rel.display().to_string(),
                    kind,
                };
                if send(sink, &Message::FsEvent(event)).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_under_a_watched_directory_arrive_as_events() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(tmp.path().join("sub")).expect("mkdir");
        let (sink, frames) = crate::exec::test_sink();
        let mut watches = Watches::default();
        let info = watches.start(tmp.path(), true, sink).expect("watch");
        assert_eq!(info.kind, skiff_proto::fs::FileKind::Dir);
        std::fs::write(tmp.path().join("a.txt"), b"x").expect("write");
        std::fs::write(tmp.path().join("sub/b.txt"), b"y").expect("write deeper");
        std::fs::remove_file(tmp.path().join("a.txt")).expect("rm");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let wanted = [
            ("a.txt", FsEventKind::Create),
            ("sub/b.txt", FsEventKind::Create),
            ("a.txt", FsEventKind::Remove),
        ];
        loop {
            let seen: Vec<(String, FsEventKind)> = frames()
                .into_iter()
                .filter_map(|m| match m {
                    Message::FsEvent(e) => Some((e.name, e.kind)),
                    _ => None,
                })
                .collect();
            let all = wanted
                .iter()
                .all(|(n, k)| seen.iter().any(|(sn, sk)| sn == n && sk == k));
            if all {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "events seen: {seen:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // A write by the agent shows as the file's, never its temporary's.
        let mut w = crate::files::start_write_for_test(&tmp.path().join("c.txt"));
        w.data(b"z");
        w.finish(&crate::exec::test_sink().0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let names: Vec<(String, FsEventKind)> = frames()
                .into_iter()
                .filter_map(|m| match m {
                    Message::FsEvent(e) => Some((e.name, e.kind)),
                    _ => None,
                })
                .collect();
            assert!(
                !names.iter().any(|(n, _)| n.contains("skiff-writing")),
                "{names:?}"
            );
            if names.contains(&("c.txt".into(), FsEventKind::Write)) {
                assert!(names.contains(&("c.txt".into(), FsEventKind::Create)));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "events seen: {names:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let gone = Watches::default()
            .start(&tmp.path().join("none"), false, crate::exec::test_sink().0)
            .expect_err("missing");
        assert_eq!(gone.kind, FsErrorKind::NotFound);
    }
}
