//! End-to-end tests of `skiff cp` against a real VM.

mod common;

use common::daemon::Daemon;
use common::{sha256_hex, stderr, stdout};
use std::os::unix::fs::PermissionsExt;

#[test]
fn files_and_trees_round_trip_with_bytes_and_modes() {
    let d = Daemon::start();
    d.boot("box", "[vm.box]\nmemory = 512\n");

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
fn a_full_guest_disk_is_reported_as_such() {
    let d = Daemon::start();
    d.boot("small", "[vm.small]\nmemory = 128\n");
    let host = tempfile::tempdir().expect("tempdir");
    let src = host.path().join("big.bin");
    std::fs::write(&src, vec![1u8; 100 * 1024 * 1024]).expect("write");
    // /tmp is a tmpfs of 64 MiB here.
    let out = d.cli(&["cp", src.to_str().expect("utf8"), "small:/tmp/big.bin"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    d.ok(&["rm", "-f", "small"]);
}

#[test]
fn copy_errors_say_what_is_wrong() {
    let d = Daemon::start();
    d.boot("box", "[vm.box]\n");
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

#[test]
fn a_one_gib_file_round_trips_intact() {
    let d = Daemon::start();
    // /tmp in the guest is a tmpfs of half the memory.
    d.boot("big", "[vm.big]\nmemory = \"3G\"\n");
    let host = tempfile::tempdir().expect("tempdir");
    let src = host.path().join("gib.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).expect("create"));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).expect("write");
        }
    }
    let want = sha256_file(&src);
    d.ok(&["cp", src.to_str().expect("utf8"), "big:/tmp/gib.bin"]);
    let size = stdout(&d.cli(&["exec", "big", "--", "stat", "-c", "%s", "/tmp/gib.bin"]));
    assert_eq!(size.trim(), "1073741824");
    let back = host.path().join("back.bin");
    d.ok(&["cp", "big:/tmp/gib.bin", back.to_str().expect("utf8")]);
    assert_eq!(sha256_file(&back), want, "the file changed on its way");
    d.ok(&["rm", "-f", "big"]);
}

fn sha256_file(p: &std::path::Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(p).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}
