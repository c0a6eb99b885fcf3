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
