use super::*;
use std::os::unix::fs::MetadataExt;

/// A tar entry written byte for byte (the tar crate's own setters refuse
/// the hostile paths these tests need).
fn entry(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, data: &[u8], link: &str) {
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append(&h, data).expect("append");
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &str) {
    entry(b, path, tar::EntryType::Regular, data.as_bytes(), "");
}

fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    entry(b, path, tar::EntryType::Directory, b"", "");
}

fn layer(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    b.into_inner().expect("tar")
}

fn read(root: &Path, p: &str) -> Option<String> {
    std::fs::read_to_string(root.join(p)).ok()
}

#[test]
fn layers_stack_with_whiteouts_opaque_directories_and_links() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    let base = layer(|b| {
        dir(b, "./etc/");
        file(b, "./etc/os-release", "base\n");
        file(b, "./etc/gone", "delete me\n");
        dir(b, "./opt/app/");
        file(b, "./opt/app/old.py", "old\n");
        file(b, "./opt/app/keep-not.py", "lower\n");
        entry(
            b,
            "./usr/bin/python3",
            tar::EntryType::Regular,
            b"#!py\n",
            "",
        );
        entry(
            b,
            "./usr/bin/python",
            tar::EntryType::Symlink,
            b"",
            "python3",
        );
        entry(
            b,
            "./usr/bin/py3",
            tar::EntryType::Link,
            b"",
            "usr/bin/python3",
        );
        file(b, "./becomes-dir", "file first\n");
    });
    let applied = apply_layer(&root, "sha256:base", &base[..]).expect("base");
    assert_eq!(applied.bytes, 5 + 10 + 4 + 6 + 5 + 11);
    assert_eq!(read(&root, "usr/bin/python").as_deref(), Some("#!py\n"));
    let m = |p: &str| std::fs::symlink_metadata(root.join(p)).expect(p);
    assert_eq!(
        m("usr/bin/py3").ino(),
        m("usr/bin/python3").ino(),
        "a hard link"
    );
    assert_eq!(m("etc/os-release").mtime(), 1_700_000_000);

    let top = layer(|b| {
        file(b, "etc/os-release", "top\n");
        entry(b, "etc/.wh.gone", tar::EntryType::Regular, b"", "");
        dir(b, "opt/app/");
        file(b, "opt/app/new.py", "new\n");
        entry(b, "opt/app/.wh..wh..opq", tar::EntryType::Regular, b"", "");
        dir(b, "becomes-dir/");
        file(b, "becomes-dir/inside", "x\n");
        entry(b, ".wh.never-there", tar::EntryType::Regular, b"", "");
    });
    let applied = apply_layer(&root, "sha256:top", &top[..]).expect("top");
    assert_eq!(applied.whiteouts, 3);
    assert_eq!(read(&root, "etc/os-release").as_deref(), Some("top\n"));
    assert!(!root.join("etc/gone").exists(), "whited out");
    assert!(
        !root.join("etc/.wh.gone").exists(),
        "the marker is not a file"
    );
    // Opaque: the lower layer's files are gone, this layer's stays (even
    // though the marker came after it in the stream).
    assert_eq!(read(&root, "opt/app/new.py").as_deref(), Some("new\n"));
    assert!(!root.join("opt/app/old.py").exists());
    assert!(!root.join("opt/app/keep-not.py").exists());
    assert_eq!(read(&root, "becomes-dir/inside").as_deref(), Some("x\n"));
}

#[test]
fn paths_that_leave_the_root_are_refused_and_write_nothing_outside() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::create_dir(&outside).expect("mkdir");
    let links = layer(|b| {
        entry(
            b,
            "link",
            tar::EntryType::Symlink,
            b"",
            outside.to_str().expect("utf8"),
        );
        entry(b, "up", tar::EntryType::Symlink, b"", "../outside");
    });
    apply_layer(&root, "sha256:links", &links[..]).expect("symlinks themselves are fine");
    for (path, kind, target, why) in [
        ("../outside/x", tar::EntryType::Regular, "", "`..`"),
        ("/outside/x", tar::EntryType::Regular, "", "absolute"),
        (
            "link/x",
            tar::EntryType::Regular,
            "",
            "parent link is a symlink",
        ),
        (
            "up/x",
            tar::EntryType::Regular,
            "",
            "parent up is a symlink",
        ),
        (
            "link/.wh.x",
            tar::EntryType::Regular,
            "",
            "parent link is a symlink",
        ),
        ("h", tar::EntryType::Link, "../outside/secret", "`..`"),
        (
            "h",
            tar::EntryType::Link,
            "link/secret",
            "parent link is a symlink",
        ),
    ] {
        std::fs::write(outside.join("secret"), "s").expect("write");
        let bad = layer(|b| entry(b, path, kind, b"evil", target));
        let e = apply_layer(&root, "sha256:bad", &bad[..])
            .expect_err(path)
            .to_string();
        assert!(
            e.contains("sha256:bad") && e.contains(path) && e.contains(why),
            "{path}: {e}"
        );
        let left: Vec<_> = std::fs::read_dir(&outside)
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["secret"], "{path} wrote outside the root");
    }
}

#[test]
fn a_truncated_layer_is_a_clear_error() {
    let t = tempfile::tempdir().expect("tempdir");
    let good = layer(|b| file(b, "big", &"x".repeat(5000)));
    let e = apply_layer(t.path(), "sha256:cut", &good[..2000])
        .expect_err("truncated")
        .to_string();
    assert!(e.contains("layer sha256:cut is corrupt"), "{e}");
}

#[test]
fn whiteouts_make_nothing_and_name_one_entry_and_opaque_reaches_redeclared_dirs() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    let base = layer(|b| {
        dir(b, "app/");
        file(b, "app/keep-me-not", "lower\n");
        dir(b, "app/sub/");
        file(b, "app/sub/lower", "lower\n");
        file(b, "top", "x\n");
    });
    apply_layer(&root, "sha256:base", &base[..]).expect("base");
    let top = layer(|b| {
        dir(b, "app/sub/");
        file(b, "app/sub/upper", "upper\n");
        entry(b, "app/.wh..wh..opq", tar::EntryType::Regular, b"", "");
        entry(b, "nowhere/deep/.wh.x", tar::EntryType::Regular, b"", "");
    });
    apply_layer(&root, "sha256:top", &top[..]).expect("top");
    assert!(!root.join("app/keep-me-not").exists());
    assert!(
        !root.join("app/sub/lower").exists(),
        "below a re-declared dir too"
    );
    assert_eq!(read(&root, "app/sub/upper").as_deref(), Some("upper\n"));
    assert!(!root.join("nowhere").exists(), "a whiteout made its parent");
    for name in [".wh..", ".wh."] {
        let bad = layer(|b| entry(b, name, tar::EntryType::Regular, b"", ""));
        let e = apply_layer(&root, "sha256:bad", &bad[..])
            .expect_err(name)
            .to_string();
        assert!(e.contains("a whiteout of no single name"), "{name}: {e}");
    }
    assert_eq!(
        read(&root, "top").as_deref(),
        Some("x\n"),
        "nothing else was removed"
    );
}
