//! The extractor against honest trees and against the entry streams a
//! hostile guest can send.

use super::*;
use crate::copy::{send_tree, Entry};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn collect(src: &Path) -> Vec<Message> {
    let mut out = Vec::new();
    send_tree(src, &mut |m| {
        out.push(m);
        Ok(())
    })
    .expect("send");
    out
}

fn entry(path: &str, kind: EntryKind, mode: u32, size: u64, target: Option<&str>) -> Message {
    Message::Entry(Entry {
        path: path.into(),
        kind,
        mode,
        size,
        target: target.map(Into::into),
    })
}

fn dir(path: &str) -> Message {
    entry(path, EntryKind::Dir, 0o755, 0, None)
}

fn file(path: &str, size: u64) -> Message {
    entry(path, EntryKind::File, 0o644, size, None)
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("meta")
        .permissions()
        .mode()
        & 0o7777
}

fn is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).expect("read").next().is_none()
}

#[test]
fn a_tree_round_trips_with_bytes_modes_and_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("proj");
    fs::create_dir_all(src.join("sub")).expect("mkdir");
    fs::write(src.join("sub/data.bin"), vec![7u8; 200_000]).expect("write");
    fs::write(src.join("run.sh"), b"#!/bin/sh\n").expect("write");
    fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o751)).expect("chmod");
    std::os::unix::fs::symlink("run.sh", src.join("link")).expect("symlink");

    let dest = tmp.path().join("out");
    fs::create_dir(&dest).expect("mkdir");
    let mut x = Extractor::new(&dest, Some("proj")).expect("extractor");
    let mut ended = false;
    for m in collect(&src) {
        ended = x.accept(m).expect("accept");
    }
    assert!(ended, "End reported");
    assert_eq!(
        fs::read(dest.join("proj/sub/data.bin")).expect("read"),
        vec![7u8; 200_000]
    );
    assert_eq!(mode_of(&dest.join("proj/run.sh")), 0o751);
    assert_eq!(
        fs::read_link(dest.join("proj/link")).expect("link"),
        PathBuf::from("run.sh")
    );
    assert_eq!(x.files, 2);
}

#[test]
fn a_single_file_can_be_renamed_by_its_destination() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("a.txt"), b"hello").expect("write");
    let mut x = Extractor::new(&tmp.path().join("b.txt"), Some("a.txt")).expect("extractor");
    for m in collect(&tmp.path().join("a.txt")) {
        x.accept(m).expect("accept");
    }
    assert_eq!(fs::read(tmp.path().join("b.txt")).expect("read"), b"hello");
}

#[test]
fn entry_paths_that_escape_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for bad in [
        "../escape",
        "/etc/passwd",
        "a/../../x",
        "",
        "a//b/.",
        "x\x1b]0;owned\x07",
    ] {
        let mut x = Extractor::new(tmp.path(), None).expect("extractor");
        let r = x.accept(file(bad, 0));
        assert!(
            matches!(r, Err(CopyError::BadPath(_))),
            "{bad:?} accepted: {r:?}"
        );
    }
    assert!(is_empty(tmp.path()));
}

#[test]
fn entries_outside_the_requested_item_are_refused() {
    // `skiff cp box:/tmp/proj ~` must not let the guest write ~/.bashrc,
    // ~/.ssh/authorized_keys or a git hook next to the copied item.
    let home = tempfile::tempdir().expect("tempdir");
    for stream in [
        vec![file(".bashrc", 0)],
        vec![dir(".ssh"), file(".ssh/authorized_keys", 0)],
        vec![dir("proj"), dir(".git"), file(".git/hooks/pre-commit", 0)],
    ] {
        let mut x = Extractor::new(home.path(), Some("proj")).expect("extractor");
        let refused = stream
            .into_iter()
            .map(|m| x.accept(m))
            .find_map(Result::err)
            .expect("a hostile entry was accepted");
        assert!(
            matches!(refused, CopyError::OutsideItem { .. }),
            "{refused}"
        );
    }
    let names: Vec<_> = fs::read_dir(home.path())
        .expect("read")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["proj"], "only the requested item was created");
    assert!(is_empty(&home.path().join("proj")));
}

#[test]
fn a_second_item_or_children_of_a_file_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut x = Extractor::new(tmp.path(), Some("a")).expect("extractor");
    x.accept(file("a", 0)).expect("the item");
    let r = x.accept(file("a", 0));
    assert!(matches!(r, Err(CopyError::SecondItem(_))), "{r:?}");
    let r = x.accept(file("a/b", 0));
    assert!(matches!(r, Err(CopyError::OutsideItem { .. })), "{r:?}");

    // Without a name given, the first entry fixes it.
    let other = tempfile::tempdir().expect("tempdir");
    let mut x = Extractor::new(other.path(), None).expect("extractor");
    x.accept(dir("first")).expect("the item");
    let r = x.accept(file("second", 0));
    assert!(matches!(r, Err(CopyError::OutsideItem { .. })), "{r:?}");
    assert!(matches!(x.accept(Message::End), Ok(true)));
    let r = Extractor::new(other.path(), None)
        .expect("extractor")
        .accept(Message::End);
    assert!(
        matches!(r, Err(CopyError::Protocol(_))),
        "an empty copy: {r:?}"
    );
}

#[test]
fn setuid_setgid_and_sticky_bits_never_land() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut x = Extractor::new(tmp.path(), Some("d")).expect("extractor");
    x.accept(entry("d", EntryKind::Dir, 0o3775, 0, None))
        .expect("dir");
    x.accept(entry("d/su", EntryKind::File, 0o6755, 0, None))
        .expect("file");
    x.accept(Message::End).expect("end");
    assert_eq!(mode_of(&tmp.path().join("d")), 0o775);
    assert_eq!(mode_of(&tmp.path().join("d/su")), 0o755);
}

#[test]
fn what_already_exists_keeps_its_mode_and_is_not_written_through() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("proj");
    fs::create_dir(&dest).expect("mkdir");
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o750)).expect("chmod");
    fs::write(dest.join("notes"), b"mine").expect("write");
    // A hard link to a file elsewhere: replacing must not write through it.
    let victim = outside.path().join("victim");
    fs::write(&victim, b"precious").expect("write");
    fs::hard_link(&victim, dest.join("linked")).expect("link");

    let mut x = Extractor::new(tmp.path(), Some("proj")).expect("extractor");
    x.accept(entry("proj", EntryKind::Dir, 0o777, 0, None))
        .expect("dir");
    x.accept(file("proj/linked", 3)).expect("file");
    x.accept(Message::Data(b"new".to_vec())).expect("data");
    // A link entry may not replace a file that is there.
    let r = x.accept(entry(
        "proj/notes",
        EntryKind::Symlink,
        0o777,
        0,
        Some("/etc/shadow"),
    ));
    assert!(matches!(r, Err(CopyError::WontReplace(..))), "{r:?}");

    assert_eq!(
        mode_of(&dest),
        0o750,
        "an existing directory is not chmod-ed"
    );
    assert_eq!(fs::read(dest.join("linked")).expect("read"), b"new");
    assert_eq!(fs::read(&victim).expect("read"), b"precious");
    assert_eq!(fs::metadata(&victim).expect("meta").nlink(), 1);
    assert_eq!(fs::read(dest.join("notes")).expect("read"), b"mine");
}

#[test]
fn nothing_is_written_through_a_symlink_made_or_swapped_in() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let out = outside.path().display().to_string();

    // A link the copy itself made, then a file "through" it.
    let mut x = Extractor::new(tmp.path(), Some("evil")).expect("extractor");
    x.accept(entry("evil", EntryKind::Symlink, 0o777, 0, Some(&out)))
        .expect("the link itself is fine");
    let r = x.accept(file("evil/owned", 0));
    assert!(matches!(r, Err(CopyError::OutsideItem { .. })), "{r:?}");

    // A directory of the copy replaced by a link while the copy runs, as a
    // guest can do when the destination is a share it writes to.
    let mut x = Extractor::new(tmp.path(), Some("proj")).expect("extractor");
    x.accept(dir("proj")).expect("dir");
    x.accept(dir("proj/sub")).expect("dir");
    fs::remove_dir(tmp.path().join("proj/sub")).expect("rmdir");
    std::os::unix::fs::symlink(outside.path(), tmp.path().join("proj/sub")).expect("symlink");
    let r = x.accept(file("proj/sub/owned", 0));
    assert!(matches!(r, Err(CopyError::ThroughSymlink(_))), "{r:?}");
    let r = x.accept(dir("proj/sub"));
    assert!(matches!(r, Err(CopyError::WontReplace(..))), "{r:?}");

    // A link already in the destination where the item would go.
    std::os::unix::fs::symlink(outside.path(), tmp.path().join("other")).expect("symlink");
    let mut x = Extractor::new(tmp.path(), Some("other")).expect("extractor");
    let r = x.accept(dir("other"));
    assert!(matches!(r, Err(CopyError::WontReplace(..))), "{r:?}");

    assert!(is_empty(outside.path()), "nothing written outside");
}

#[test]
fn sizes_are_held_to_what_the_entry_announced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut x = Extractor::new(tmp.path(), None).expect("extractor");
    x.accept(file("f", 0)).expect("entry");
    assert!(matches!(
        x.accept(Message::Data(vec![1])),
        Err(CopyError::Protocol(_))
    ));
    let mut x = Extractor::new(tmp.path(), None).expect("extractor");
    x.accept(file("g", 2)).expect("entry");
    x.accept(Message::Data(vec![1])).expect("data");
    assert!(matches!(
        x.accept(Message::End),
        Err(CopyError::Protocol(_))
    ));
}

#[test]
fn a_missing_source_is_a_clear_error() {
    let err = send_tree(Path::new("/nonexistent/x"), &mut |_| Ok(())).expect_err("missing");
    assert!(err.to_string().starts_with("/nonexistent/x: "), "{err}");
}

#[test]
fn an_entry_under_a_file_is_refused_as_such() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut x = Extractor::new(tmp.path(), Some("proj")).expect("extractor");
    x.accept(dir("proj")).expect("dir");
    x.accept(file("proj/f", 0)).expect("file");
    let r = x.accept(file("proj/f/x", 0));
    assert!(matches!(r, Err(CopyError::ParentNotDirectory(_))), "{r:?}");
}
