//! End-to-end tests of the drives a daemon VM gets: the config drive and
//! named volumes, found by label inside a booted guest.

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout};

#[test]
fn config_drive_and_volume_have_their_labels_options_and_content() {
    let d = Daemon::start();
    let spec = d.write_spec(
        "db.toml",
        "[vm.db]\n[[vm.db.volumes]]\nname = \"db-data\"\ntarget = \"/data\"\nsize = \"64M\"\n",
    );
    d.ok(&["apply", "-f", spec.to_str().expect("utf8")]);
    d.ok(&["start", "db"]);
    let mounts = stdout(&d.cli(&["exec", "db", "--", "cat", "/proc/mounts"]));
    let config = mounts
        .lines()
        .find(|l| l.contains(" /run/skiff/config "))
        .unwrap_or_else(|| panic!("no config drive: {mounts}"));
    for opt in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            config
                .split_whitespace()
                .nth(3)
                .is_some_and(|o| o.split(',').any(|x| x == opt)),
            "{opt} missing: {config}"
        );
    }
    let data = mounts
        .lines()
        .find(|l| l.contains(" /data "))
        .unwrap_or_else(|| panic!("no volume: {mounts}"));
    assert!(data.contains(" ext4 rw,"), "{data}");
    let instance: serde_json::Value = serde_json::from_str(&stdout(&d.cli(&[
        "exec",
        "db",
        "--",
        "cat",
        "/run/skiff/config/instance.json",
    ])))
    .expect("instance.json");
    assert_eq!(instance["name"], "db");
    assert_eq!(instance["id"], d.inspect("db")["id"]);
    // Even root cannot write the config drive.
    let out = d.cli(&[
        "exec",
        "db",
        "--",
        "sh",
        "-c",
        "echo x > /run/skiff/config/evil",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    d.ok(&["rm", "-f", "db"]);
}

#[test]
fn volume_data_survives_rm_and_recreate_until_rm_volumes() {
    let d = Daemon::start();
    let spec = d.write_spec(
        "db.toml",
        "[vm.db]\n[[vm.db.volumes]]\nname = \"keep\"\ntarget = \"/data\"\nsize = \"64M\"\n",
    );
    let spec = spec.to_str().expect("utf8");
    d.ok(&["apply", "-f", spec]);
    d.ok(&["start", "db"]);
    d.ok(&[
        "exec",
        "db",
        "--",
        "sh",
        "-c",
        "echo persisted > /data/x && sync",
    ]);
    d.ok(&["rm", "-f", "db"]);
    assert!(
        d.state().join("volumes/keep.ext4").exists(),
        "rm keeps volumes"
    );

    d.ok(&["apply", "-f", spec]);
    d.ok(&["start", "db"]);
    assert_eq!(
        stdout(&d.cli(&["exec", "db", "--", "cat", "/data/x"])),
        "persisted\n"
    );

    // One writer at a time: a second VM cannot attach the volume now.
    let other = d.write_spec(
        "other.toml",
        "[vm.other]\n[[vm.other.volumes]]\nname = \"keep\"\ntarget = \"/data\"\n",
    );
    d.ok(&["apply", "-f", other.to_str().expect("utf8")]);
    let out = d.cli(&["start", "other"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("lock") && stderr(&out).contains("keep.ext4"),
        "{}",
        stderr(&out)
    );

    d.ok(&["rm", "-f", "--volumes", "db", "other"]);
    assert!(
        !d.state().join("volumes/keep.ext4").exists(),
        "rm --volumes deletes them"
    );
}

/// Every file at or under `path` that contains `needle`, except under
/// `skip` (files over 64 MiB are not read: no secret-bearing file is that
/// big).
fn files_containing(
    path: &std::path::Path,
    needle: &[u8],
    skip: &std::path::Path,
) -> Vec<std::path::PathBuf> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Vec::new();
    };
    if path.starts_with(skip) {
        Vec::new()
    } else if meta.is_dir() {
        let entries = std::fs::read_dir(path).into_iter().flatten().flatten();
        entries
            .flat_map(|e| files_containing(&e.path(), needle, skip))
            .collect()
    } else if meta.is_file() && meta.len() <= 64 << 20 && contains(path, needle) {
        vec![path.to_owned()]
    } else {
        Vec::new()
    }
}

fn contains(file: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read(file).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
}

/// Where a secret could land on the host besides the guest's memory: the
/// daemon's state and runtime directories, its log, and what appeared in
/// the temporary directories since `since` (the test's own copy of the
/// secret under `source` aside).
fn secret_leaks(
    d: &Daemon,
    needles: &[&[u8]],
    source: &std::path::Path,
    since: std::time::SystemTime,
) -> Vec<String> {
    let mut places = vec![d.state(), d.runtime()];
    for tmp in [std::env::temp_dir(), "/dev/shm".into(), "/var/tmp".into()] {
        let entries = std::fs::read_dir(&tmp).into_iter().flatten().flatten();
        places.extend(entries.map(|e| e.path()).filter(|p| {
            let modified = std::fs::symlink_metadata(p).and_then(|m| m.modified());
            modified.map(|m| m >= since).unwrap_or(false)
        }));
    }
    let log = d.log();
    let mut leaks = Vec::new();
    for needle in needles {
        for place in &places {
            leaks.extend(
                files_containing(place, needle, source)
                    .into_iter()
                    .map(|p| p.display().to_string()),
            );
        }
        if log.as_bytes().windows(needle.len()).any(|w| w == *needle) {
            leaks.push("the daemon's log".into());
        }
    }
    leaks.sort();
    leaks.dedup();
    leaks
}

#[test]
fn secrets_reach_the_guest_read_only_and_never_touch_the_state_directory() {
    // Unique per run, so that a match can only come from this test.
    let token = format!(
        "tok-{}-{}",
        std::process::id(),
        common::sha256_hex(format!("{:?}", std::time::SystemTime::now()).as_bytes())
    );
    let env_value = format!("env-{token}");
    // A name no other test uses; the daemon started below inherits it.
    std::env::set_var("SKIFF_TEST_SECRET_FROM_ENV", &env_value);
    let since = std::time::SystemTime::now() - std::time::Duration::from_secs(2);
    let d = Daemon::start();
    let host = tempfile::tempdir().expect("tempdir");
    let secret_file = host.path().join("token");
    std::fs::write(&secret_file, &token).expect("write secret");
    let spec = d.write_spec(
        "app.toml",
        &format!(
            "[vm.app]\nsecrets = {{ token = {{ file = \"{}\" }}, api-key = {{ env = \"SKIFF_TEST_SECRET_FROM_ENV\" }} }}\n",
            secret_file.display()
        ),
    );
    d.ok(&["apply", "-f", spec.to_str().expect("utf8")]);
    d.ok(&["start", "app"]);
    let out = d.cli(&["exec", "app", "--", "sh", "-c", "cat /run/skiff/secrets/token; echo; cat /run/skiff/secrets/api-key; echo; stat -c %a /run/skiff/secrets/token; grep ' /run/skiff/secrets ' /proc/mounts"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        &lines[..3],
        [token.as_str(), env_value.as_str(), "400"],
        "{text}\n{}",
        stderr(&out)
    );
    assert!(lines[3].contains("ro,nosuid,nodev,noexec"), "{text}");

    let id = d.inspect("app")["id"].as_str().expect("id").to_owned();
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&id))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "the secrets image is unlinked once the VM has it: {leftovers:?}"
    );
    let needles = [token.as_bytes(), env_value.as_bytes()];
    let leaks = secret_leaks(&d, &needles, host.path(), since);
    assert!(
        leaks.is_empty(),
        "a secret is on the host's disk while the VM runs: {leaks:?}"
    );
    d.ok(&["stop", "app"]);
    let leaks = secret_leaks(&d, &needles, host.path(), since);
    assert!(
        leaks.is_empty(),
        "a secret is on the host's disk after stop: {leaks:?}"
    );
    d.ok(&["rm", "app"]);
}

#[test]
fn the_data_drive_and_named_volumes_are_managed_by_name() {
    let d = Daemon::start();
    assert_eq!(
        d.ok(&["volume", "create", "shared", "--size", "64M"]),
        "created volume shared\n"
    );
    let out = d.cli(&["volume", "create", "shared"]);
    assert!(
        stderr(&out).contains("a volume named \"shared\" already exists"),
        "{}",
        stderr(&out)
    );
    let spec = d.write_spec(
        "box.toml",
        "[vm.box]\ndata = { target = \"/var/lib/app\", size = \"64M\" }\n[[vm.box.volumes]]\nname = \"shared\"\ntarget = \"/shared\"\n",
    );
    let spec = spec.to_str().expect("utf8");
    d.ok(&["apply", "-f", spec]);
    d.ok(&["start", "box"]);
    let mounts = stdout(&d.cli(&["exec", "box", "--", "cat", "/proc/mounts"]));
    assert!(mounts.contains(" /var/lib/app ext4 rw,"), "{mounts}");
    let label = stdout(&d.cli(&["exec", "box", "--", "sh", "-c", "for d in /dev/vd?; do dd if=$d bs=1 skip=1144 count=16 2>/dev/null | tr -d '\\0'; echo; done"]));
    assert!(label.lines().any(|l| l == "skiff-data"), "labels: {label}");
    d.ok(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "echo mine > /var/lib/app/f && sync",
    ]);

    let listed: serde_json::Value =
        serde_json::from_str(&d.ok(&["volume", "ls", "--json"])).expect("json");
    assert_eq!(listed[0]["name"], "shared");
    assert_eq!(listed[0]["used_by"][0], "box");
    let out = d.cli(&["volume", "rm", "shared"]);
    assert!(
        stderr(&out).contains("in use by the running VM \"box\""),
        "{}",
        stderr(&out)
    );

    // The data drive survives rm and re-create of a VM of the same name...
    d.ok(&["rm", "-f", "box"]);
    d.ok(&["apply", "-f", spec]);
    d.ok(&["start", "box"]);
    assert_eq!(
        stdout(&d.cli(&["exec", "box", "--", "cat", "/var/lib/app/f"])),
        "mine\n"
    );
    // ... until rm --volumes; a stopped VM's volume can be removed by name.
    d.ok(&["stop", "box"]);
    assert_eq!(d.ok(&["volume", "rm", "shared"]), "removed volume shared\n");
    d.ok(&["rm", "--volumes", "box"]);
    assert!(!d.state().join("data/box.ext4").exists());
    assert_eq!(d.ok(&["volume", "ls", "--json"]).trim(), "[]");
}

#[test]
fn shares_are_read_only_or_writable_as_specified_even_for_root() {
    let d = Daemon::start();
    let host = tempfile::tempdir().expect("tempdir");
    let (ro, rw) = (host.path().join("ro"), host.path().join("rw"));
    std::fs::create_dir_all(&ro).expect("mkdir");
    std::fs::create_dir_all(&rw).expect("mkdir");
    std::fs::write(ro.join("a.txt"), "host-file\n").expect("write");
    common::give_to_share_owner(&rw);
    let spec = d.write_spec(
        "sh.toml",
        &format!(
            "[vm.sh]\n[[vm.sh.shares]]\nsource = \"{}\"\ntarget = \"/mnt/ro\"\nreadonly = true\n[[vm.sh.shares]]\nsource = \"{}\"\ntarget = \"/mnt/rw\"\n",
            ro.display(),
            rw.display()
        ),
    );
    d.ok(&["apply", "-f", spec.to_str().expect("utf8")]);
    d.ok(&["start", "sh"]);
    assert_eq!(
        stdout(&d.cli(&["exec", "sh", "--", "cat", "/mnt/ro/a.txt"])),
        "host-file\n"
    );
    // Root in the guest remounts read-write and still cannot write: the host enforces it.
    let out = d.cli(&[
        "exec",
        "sh",
        "--",
        "sh",
        "-c",
        "mount -o remount,rw /mnt/ro && grep ' /mnt/ro ' /proc/mounts && echo x > /mnt/ro/b.txt",
    ]);
    assert_ne!(out.status.code(), Some(0));
    // The remount itself succeeded: the guest's kernel thinks the share is
    // writable, so the refusal below can only come from the host.
    assert!(
        stdout(&out).contains(" /mnt/ro virtiofs rw"),
        "the guest could not remount: {} {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert!(!ro.join("b.txt").exists());
    d.ok(&[
        "exec",
        "sh",
        "--",
        "sh",
        "-c",
        "echo from-guest > /mnt/rw/c.txt",
    ]);
    assert_eq!(
        std::fs::read_to_string(rw.join("c.txt")).expect("read"),
        "from-guest\n"
    );
    // Guest root is the share's owner on the host, nothing more: what it
    // makes and chowns belongs to the owner, and no setuid or setgid file
    // and no device node can appear through the share.
    let out = d.cli(&[
        "exec",
        "sh",
        "--",
        "sh",
        "-c",
        "cd /mnt/rw && cp /bin/busybox su && chown 0:0 su c.txt; chmod 4755 su; chmod g+s c.txt; mknod null c 1 3; mkdir -m 2775 d; true",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    use std::os::unix::fs::MetadataExt;
    for name in ["c.txt", "su", "d"] {
        let m = std::fs::symlink_metadata(rw.join(name)).expect("made in the guest");
        let owner = if nix::unistd::geteuid().is_root() {
            common::SHARE_OWNER
        } else {
            nix::unistd::geteuid().as_raw()
        };
        assert_eq!(
            (m.uid(), m.gid()),
            (owner, owner),
            "{name} is owned by the share's owner"
        );
        assert_eq!(
            m.mode() & 0o6000,
            0,
            "{name} has a set-id bit: {:o}",
            m.mode()
        );
    }
    assert!(
        !rw.join("null").exists(),
        "a device node appeared on the host"
    );
    // The share servers (each virtiofsd and its sandboxed worker) run in
    // the VM's cgroup, under its limits, and end with the VM.
    let servers = common::processes_under(&rw);
    assert!(servers.len() >= 2, "virtiofsd and its worker: {servers:?}");
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        for p in &servers {
            let pid = p.split(':').next().expect("pid");
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            assert!(cg.contains("/vm-"), "{p} is in {cg}");
        }
    }
    d.ok(&["rm", "-f", "sh"]);
    common::assert_no_processes_under(&rw);

    // A root daemon never writes a share as root.
    if nix::unistd::geteuid().is_root() {
        let root_owned = host.path().join("root-owned");
        std::fs::create_dir_all(&root_owned).expect("mkdir");
        let spec = d.write_spec(
            "rootshare.toml",
            &format!(
                "[vm.rs]\n[[vm.rs.shares]]\nsource = \"{}\"\ntarget = \"/mnt/rw\"\n",
                root_owned.display()
            ),
        );
        d.ok(&["apply", "-f", spec.to_str().expect("utf8")]);
        let out = d.cli(&["start", "rs"]);
        assert_ne!(out.status.code(), Some(0));
        assert!(
            stderr(&out).contains("belongs to root: the guest writes a share as the share's owner"),
            "{}",
            stderr(&out)
        );
        d.ok(&["rm", "-f", "rs"]);
    }

    let missing = d.write_spec(
        "bad.toml",
        "[vm.bad]\n[[vm.bad.shares]]\nsource = \"/nonexistent/dir\"\ntarget = \"/mnt\"\n",
    );
    d.ok(&["apply", "-f", missing.to_str().expect("utf8")]);
    let out = d.cli(&["start", "bad"]);
    assert!(
        stderr(&out).contains("share source /nonexistent/dir is not an existing directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_daemon_vm_boots_into_its_spec_rootfs() {
    let d = Daemon::start();
    let host = tempfile::tempdir().expect("tempdir");
    let root = host.path().join("root");
    common::busybox_rootfs(&root);
    d.boot("rooted", &format!("[vm.rooted]\nrootfs = \"{}\"\n[[vm.rooted.volumes]]\nname = \"rv\"\ntarget = \"/data\"\nsize = \"32M\"\n", root.display()));
    let out = d.cli(&[
        "exec",
        "rooted",
        "--",
        "sh",
        "-c",
        "cat /etc/marker; test -e /init || echo no-initramfs; grep -c ' /data ' /proc/mounts",
    ]);
    assert_eq!(
        stdout(&out),
        "from-the-host-rootfs\nno-initramfs\n1\n",
        "{}",
        stderr(&out)
    );
    d.ok(&["rm", "-f", "--volumes", "rooted"]);
}

#[test]
fn a_drive_the_guest_cannot_find_fails_the_start_with_its_name() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "broken", "--size", "32M"]);
    // Not ext4 any more: the agent cannot find its label.
    std::fs::write(d.state().join("volumes/broken.ext4"), vec![0u8; 1 << 20]).expect("overwrite");
    let spec = d.write_spec(
        "b.toml",
        "[vm.b]\n[[vm.b.volumes]]\nname = \"broken\"\ntarget = \"/data\"\n",
    );
    d.ok(&["create", "-f", spec.to_str().expect("utf8")]);
    let out = d.cli(&["start", "b"]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("the guest could not be set up") && err.contains("(for /data) is missing"),
        "{err}"
    );
    assert_eq!(d.inspect("b")["state"], "exited");
    assert_eq!(d.qemu_count(), 0, "nothing left running");
}
