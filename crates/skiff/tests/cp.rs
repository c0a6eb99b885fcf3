//! End-to-end tests of `skiff cp` against a real VM.

mod common;

use common::daemon::Daemon;
use common::{sha256_hex, stderr, stdout};
use std::os::unix::fs::PermissionsExt;

#[test]
fn files_and_trees_round_trip_with_bytes_and_modes() {
    let d = Daemon::start();
    let spec = d.write_spec("box.toml", "[vm.box]\nmemory = 512\n");
    d.ok(&["create", "-f", spec.to_str().expect("utf8")]);
    d.ok(&["start", "box"]);

    let host = tempfile::tempdir().expect("tempdir");
    let tree = host.path().join("proj");
    std::fs::create_dir_all(tree.join("sub/deeper")).expect("mkdir");
    let blob: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(tree.join("sub/deeper/blob.bin"), &blob).expect("write");
    std::fs::write(tree.join("run.sh"), b"#!/bin/sh\necho ran\n").expect("write");
    std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o751))
        .expect("chmod");
    std::os::unix::fs::symlink("run.sh", tree.join("link")).expect("symlink");

    // Into an existing guest directory: lands as /tmp/proj.
    d.ok(&["cp", tree.to_str().expect("utf8"), "box:/tmp"]);
    let out = d.cli(&["exec", "box", "--", "sh", "-c", "sha256sum /tmp/proj/sub/deeper/blob.bin | cut -d' ' -f1; stat -c %a /tmp/proj/run.sh; readlink /tmp/proj/link; /tmp/proj/run.sh"]);
    assert_eq!(
        stdout(&out),
        format!("{}\n751\nrun.sh\nran\n", sha256_hex(&blob)),
        "{}",
        stderr(&out)
    );

    // A single file to a new name.
    d.ok(&[
        "cp",
        tree.join("run.sh").to_str().expect("utf8"),
        "box:/tmp/renamed.sh",
    ]);
    assert_eq!(
        stdout(&d.cli(&["exec", "box", "--", "cat", "/tmp/renamed.sh"])),
        "#!/bin/sh\necho ran\n"
    );

    // And back out, into a new host directory name.
    let back = host.path().join("back");
    d.ok(&["cp", "box:/tmp/proj", back.to_str().expect("utf8")]);
    assert_eq!(
        std::fs::read(back.join("sub/deeper/blob.bin")).expect("read"),
        blob
    );
    let mode = std::fs::metadata(back.join("run.sh"))
        .expect("meta")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o751);
    assert_eq!(
        std::fs::read_link(back.join("link"))
            .expect("link")
            .to_str(),
        Some("run.sh")
    );

    // Guest-made content comes out as the guest wrote it.
    d.ok(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "printf 'made in guest' > /tmp/g.txt && chmod 600 /tmp/g.txt",
    ]);
    d.ok(&["cp", "box:/tmp/g.txt", host.path().to_str().expect("utf8")]);
    assert_eq!(
        std::fs::read(host.path().join("g.txt")).expect("read"),
        b"made in guest"
    );
    let mode = std::fs::metadata(host.path().join("g.txt"))
        .expect("meta")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o600);
    d.ok(&["rm", "-f", "box"]);
}

#[test]
fn copy_errors_say_what_is_wrong() {
    let d = Daemon::start();
    let spec = d.write_spec("box.toml", "[vm.box]\n");
    d.ok(&["create", "-f", spec.to_str().expect("utf8")]);
    d.ok(&["start", "box"]);
    let host = tempfile::tempdir().expect("tempdir");

    let out = d.cli(&[
        "cp",
        "box:/no/such/file",
        host.path().to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("/no/such/file: No such file or directory"),
        "{}",
        stderr(&out)
    );

    let out = d.cli(&[
        "cp",
        host.path().join("missing").to_str().expect("utf8"),
        "box:/tmp/",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));

    let out = d.cli(&["cp", "/etc/hostname", "box:relative/path"]);
    assert!(
        stderr(&out).contains("is not an absolute guest path"),
        "{}",
        stderr(&out)
    );

    let out = d.cli(&["cp", "/etc/hostname", "box:/no/such/dir/x"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("/no/such/dir"), "{}", stderr(&out));

    let out = d.cli(&["cp", "a", "b"]);
    assert!(
        stderr(&out).contains("one side must be a VM path"),
        "{}",
        stderr(&out)
    );
    d.ok(&["rm", "-f", "box"]);
}
