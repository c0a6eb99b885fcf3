//! End-to-end tests of snapshots by tag: new VMs restored from another
//! VM's saved, booted state, each with its own name, address, MAC, entropy
//! and clock.

mod common;

use common::daemon::Daemon;
use common::netns::NetNs;

const SOURCE: &str = "[vm.src]\npausable = true\nmemory = \"256M\"\nnetwork = { mode = \"bridge\", network = \"snaps\" }\n";

fn sh(d: &Daemon, vm: &str, script: &str) -> String {
    d.ok(&["exec", vm, "--", "sh", "-c", script])
}

/// The address the network leased to `vm`.
fn leased(d: &Daemon, vm: &str) -> String {
    let nets: serde_json::Value =
        serde_json::from_str(&d.ok(&["network", "ls", "--json"])).expect("json");
    nets[0]["leases"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["vm"] == vm))
        .and_then(|l| l["address"].as_str())
        .unwrap_or_else(|| panic!("no lease for {vm}: {nets}"))
        .to_owned()
}

#[test]
fn vms_started_from_a_snapshot_keep_its_state_and_get_their_own_identity() {
    // In a namespace of its own: the network's links go with it.
    let host = NetNs::new("s");
    let d = Daemon::start_wrapped(&[], &host.exec_prefix());
    d.ok(&["network", "create", "snaps", "--subnet", "10.96.0.0/24"]);
    d.boot("src", SOURCE);
    sh(
        &d,
        "src",
        "echo kept > /root/keep.txt; setsid sh -c 'n=0; while :; do n=$((n+1)); echo $n > /tmp/count; sleep 0.2; done' </dev/null >/dev/null 2>&1 & echo $! > /tmp/pid",
    );
    let pid = sh(&d, "src", "cat /tmp/pid").trim().to_owned();
    let taken = d.ok(&["snapshot", "src", "base"]);
    assert!(taken.starts_with("snapshot base of src: "), "{taken}");
    // The source runs on, with its process.
    assert_eq!(d.inspect("src")["state"], "running");
    assert_eq!(
        sh(&d, "src", &format!("kill -0 {pid} && echo alive")),
        "alive\n"
    );
    let list: serde_json::Value =
        serde_json::from_str(&d.ok(&["snapshot", "ls", "--json"])).expect("json");
    assert_eq!(list[0]["tag"], "base");
    assert_eq!(list[0]["vm"], "src");

    let mut seen = vec![(
        leased(&d, "src"),
        sh(&d, "src", "cat /sys/class/net/eth0/address"),
    )];
    let mut randoms = Vec::new();
    for clone in ["c1", "c2"] {
        assert_eq!(
            d.ok(&["run", "-d", "--name", clone, "--from-snapshot", "base"]),
            format!("{clone}\n")
        );
        assert_eq!(d.inspect(clone)["state"], "running");
        // The saved state: the file, and the process, still counting.
        assert_eq!(sh(&d, clone, "cat /root/keep.txt"), "kept\n");
        assert_eq!(
            sh(&d, clone, &format!("kill -0 {pid} && echo alive")),
            "alive\n"
        );
        let a: u64 = sh(&d, clone, "cat /tmp/count")
            .trim()
            .parse()
            .expect("count");
        std::thread::sleep(std::time::Duration::from_millis(800));
        let b: u64 = sh(&d, clone, "cat /tmp/count")
            .trim()
            .parse()
            .expect("count");
        assert!(b > a, "{clone}: {b} <= {a}");
        // Its own address and MAC, which the network lets through: the
        // gateway answers it.
        let address = leased(&d, clone);
        let ip = sh(&d, clone, "ip -4 -o addr show eth0");
        assert!(
            ip.contains(&format!("{address}/24")),
            "{clone}: {ip}, leased {address}"
        );
        let mac = sh(&d, clone, "cat /sys/class/net/eth0/address");
        let ping = d.cli(&[
            "exec",
            clone,
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            "10.96.0.1",
        ]);
        assert_eq!(ping.status.code(), Some(0), "{clone}: {ping:?}");
        assert!(
            !seen.iter().any(|(a, m)| *a == address || *m == mac),
            "{clone}: {address} {mac} {seen:?}"
        );
        seen.push((address, mac));
        // Its clock is the host's, not the snapshot's.
        let guest: i64 = sh(&d, clone, "date +%s").trim().parse().expect("date");
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs() as i64;
        assert!(
            (guest - host).abs() <= 2,
            "{clone}: guest {guest}, host {host}"
        );
        randoms.push(sh(&d, clone, "head -c 16 /dev/urandom | od -An -tx1"));
    }
    assert_ne!(randoms[0], randoms[1], "the clones share a random stream");
    // A clone is pausable as its source was.
    assert_eq!(d.ok(&["pause", "c2"]), "c2 paused\n");
    assert_eq!(d.ok(&["resume", "c2"]), "c2 running\n");
    assert_eq!(sh(&d, "c2", "cat /root/keep.txt"), "kept\n");
    // The clones reach each other over the network.
    let c2 = seen[2].0.clone();
    let ping = d.cli(&["exec", "c1", "--", "ping", "-c", "1", "-W", "5", &c2]);
    assert_eq!(ping.status.code(), Some(0), "{ping:?}");

    // An attached run from a snapshot: the command's exit code, then the
    // VM is gone.
    let out = d.cli(&[
        "run",
        "--from-snapshot",
        "base",
        "--",
        "sh",
        "-c",
        "cat /root/keep.txt; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(common::stdout(&out), "kept\n");
    let names = d.ok(&["ls", "-q"]);
    assert_eq!(names.lines().count(), 3, "{names}");

    // Removing the snapshot leaves its VMs as they are.
    d.ok(&["snapshot", "rm", "base"]);
    assert_eq!(sh(&d, "c1", "cat /root/keep.txt"), "kept\n");
    let out = d.cli(&["run", "--from-snapshot", "base", "--", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        common::stderr(&out).contains("no snapshot tagged \"base\""),
        "{out:?}"
    );
    // A restore happens once: a stopped clone boots cold next time.
    d.ok(&["stop", "c1"]);
    d.ok(&["start", "c1"]);
    assert_eq!(
        sh(&d, "c1", "test -e /root/keep.txt || echo fresh"),
        "fresh\n"
    );
    for vm in ["c1", "c2", "src"] {
        d.ok(&["rm", "-f", vm]);
    }
    assert_eq!(d.qemu_count(), 0);
}

#[test]
fn what_cannot_be_snapshotted_or_started_is_refused_clearly() {
    let d = Daemon::start_fake();
    d.boot("plain", "[vm.plain]\n");
    let refused = |args: &[&str], want: &str| {
        let out = d.cli(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = common::stderr(&out);
        assert!(err.contains(want), "{args:?}: {err}");
    };
    refused(&["snapshot", "plain", "t"], "not started as a pausable VM");
    assert_eq!(d.inspect("plain")["state"], "running");
    refused(&["snapshot", "plain", "Bad_Tag"], "invalid snapshot tag");
    let spec = d.write_spec(
        "vol.toml",
        "[vm.vol]\npausable = true\n[[vm.vol.volumes]]\nname = \"v\"\ntarget = \"/data\"\n",
    );
    d.ok(&["create", "-f", spec.to_str().expect("utf8")]);
    refused(&["snapshot", "vol", "t"], "writable disks");
    refused(
        &["run", "--from-snapshot", "nope", "--", "true"],
        "no snapshot tagged \"nope\"",
    );
    refused(&["snapshot", "rm", "nope"], "no snapshot tagged \"nope\"");
    refused(&["run", "--from-snapshot", "t"], "no command given");
    refused(
        &[
            "run",
            "--from-snapshot",
            "t",
            "--memory",
            "512",
            "--",
            "true",
        ],
        "cannot be used with",
    );
    assert_eq!(
        d.ok(&["snapshot", "ls"]).lines().count(),
        1,
        "only the header"
    );
    assert!(!d.state().join("snapshots/t").exists());
}
