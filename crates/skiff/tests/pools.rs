//! End-to-end tests of warm pools: a real daemon keeps real VMs booted;
//! sandboxes are taken, used, expired and replaced; the pool survives a
//! daemon restart.

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

fn pool_field(d: &Daemon, pool: &str, key: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["pool", "ls", "--json"])).expect("json");
    v.as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == pool)
        .and_then(|p| p[key].as_u64())
        .unwrap_or(0)
}

fn vm_names(d: &Daemon) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(&d.ok(&["ls", "--json"])).expect("json");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|vm| vm["name"].as_str().map(str::to_owned))
        .collect()
}

/// POST JSON to the daemon's socket with curl (the API as an SDK sees it).
fn api_post(d: &Daemon, path: &str, body: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(d.socket())
        .args([
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ])
        .arg(format!("http://skiff{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_owned(), code.to_owned())
}

#[test]
fn a_pool_hands_out_ready_sandboxes_once_refills_expires_and_survives_restarts() {
    let mut d = Daemon::start();
    d.ok(&["pool", "create", "sb", "--size", "2", "--ttl", "120"]);
    let dup = d.cli(&["pool", "create", "sb"]);
    assert!(
        stderr(&dup).contains("a pool named \"sb\" already exists"),
        "{}",
        stderr(&dup)
    );
    let bad = d.cli(&["pool", "create", "p2", "--image", "no-such-image"]);
    assert!(
        stderr(&bad).contains("no image named \"no-such-image\""),
        "{}",
        stderr(&bad)
    );
    let missing = d.cli(&["pool", "take", "nope"]);
    assert!(
        stderr(&missing).contains("no pool named \"nope\""),
        "{}",
        stderr(&missing)
    );
    d.wait_for("two ready sandboxes", Duration::from_secs(180), || {
        pool_field(&d, "sb", "ready") == 2
    });
    assert_eq!(d.qemu_count(), 2);
    // QEMU runs under its seccomp filter and, for a root daemon, as nobody.
    let names = vm_names(&d);
    let first = names.iter().next().expect("a pool VM");
    assert_confined(&d, first);

    // A command in a sandbox from the pool: its output and exit code; then
    // the sandbox is gone and a replacement boots.
    let before = vm_names(&d);
    let out = d.cli(&[
        "run",
        "--pool",
        "sb",
        "--",
        "sh",
        "-c",
        "echo $((6*7)); exit 3",
    ]);
    assert_eq!(stdout(&out), "42\n", "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(3));
    let after = vm_names(&d);
    assert_eq!(
        before.difference(&after).count(),
        1,
        "the used sandbox was destroyed"
    );
    d.wait_for("the pool to refill", Duration::from_secs(180), || {
        pool_field(&d, "sb", "ready") == 2
    });

    // Taken sandboxes are never handed out twice. Taken without a time to
    // live of their own, they get the pool's (120 s).
    let mut taken = BTreeSet::new();
    for _ in 0..3 {
        let asked = now();
        let sandbox: serde_json::Value =
            serde_json::from_str(&d.ok(&["pool", "take", "sb", "--json"])).expect("take json");
        let expires = sandbox["expires_at"].as_i64().expect("expires_at");
        assert!(
            (asked + 119..=now() + 121).contains(&expires),
            "the pool's TTL: {sandbox}"
        );
        let name = sandbox["vm"].as_str().expect("vm").to_owned();
        assert!(taken.insert(name.clone()), "{name} handed out twice");
        let host = d.ok(&["exec", &name, "--", "echo", "ok"]);
        assert_eq!(host, "ok\n");
    }
    assert_eq!(pool_field(&d, "sb", "taken"), 3);

    // A guest that exhausts its memory kills only its own process.
    let hog = taken.iter().next().expect("a taken sandbox");
    let oom = d.cli(&[
        "exec",
        hog,
        "--",
        "sh",
        "-c",
        "head -c 600m /dev/zero | tail",
    ]);
    assert_eq!(oom.status.code(), Some(137), "{}", stderr(&oom));
    assert_eq!(
        d.ok(&["exec", hog, "--", "echo", "still here"]),
        "still here\n"
    );

    // A short time to live destroys the sandbox; the API extends one.
    let short = d
        .ok(&["pool", "take", "sb", "--ttl", "2"])
        .trim()
        .to_owned();
    let keep = taken.iter().next().cloned().expect("one taken");
    let (body, code) = api_post(&d, &format!("/v1/vms/{keep}/ttl"), r#"{"seconds": 3600}"#);
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        v["expires_at"].as_i64().unwrap_or(0) > 3000 + now(),
        "{body}"
    );
    let (body, code) = api_post(&d, "/v1/vms/nope/ttl", r#"{"seconds": 5}"#);
    assert_eq!(code, "404", "{body}");
    d.wait_for(
        "the short-lived sandbox to be destroyed",
        Duration::from_secs(30),
        || !vm_names(&d).contains(&short),
    );

    // The daemon dies and comes back: the pool, its warm VMs and the taken
    // sandboxes are still there, without a second QEMU for any of them.
    d.wait_for("the pool to refill", Duration::from_secs(180), || {
        pool_field(&d, "sb", "ready") == 2
    });
    let vms_before = vm_names(&d);
    d.kill9();
    d.spawn();
    assert_eq!(vm_names(&d), vms_before);
    assert_eq!(pool_field(&d, "sb", "ready"), 2);
    assert_eq!(pool_field(&d, "sb", "taken"), 3);
    assert_eq!(d.qemu_count(), 5);

    // Resize down, then remove the pool: warm VMs go, taken ones stay.
    d.ok(&["pool", "resize", "sb", "1"]);
    d.wait_for("one warm sandbox", Duration::from_secs(30), || {
        pool_field(&d, "sb", "ready") + pool_field(&d, "sb", "booting") == 1
    });
    d.ok(&["pool", "rm", "sb"]);
    assert_eq!(vm_names(&d), taken);
    assert_eq!(d.qemu_count(), 3);
    let gone = d.inspect(taken.iter().next().expect("one")).clone();
    for name in &taken {
        d.ok(&["rm", "--force", name]);
    }
    assert_eq!(d.qemu_count(), 0);
    // The VM's cgroup went with it.
    let id = gone["id"].as_str().expect("id");
    assert_eq!(cgroups_left(id), Vec::<String>::new(), "cgroups left");
}

/// `skiff run` through the daemon boots on the same road as every VM: while
/// its command runs it is in `skiff ls`, its QEMU under seccomp, as nobody
/// (root daemon) and in its own cgroup; afterwards nothing of it is left.
#[test]
fn a_run_through_the_daemon_is_a_confined_vm_of_the_manager() {
    let d = Daemon::start();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.env("SKIFF_SOCKET", d.socket())
        .env("SKIFF_STATE_DIR", d.state())
        .env("SKIFF_RUNTIME_DIR", d.runtime())
        .args(["run", "-q", "--", "sh", "-c", "sleep 4; echo done; exit 5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let client = cmd.spawn().expect("skiff run");
    let mut name = String::new();
    d.wait_for(
        "the run's VM running in ls",
        Duration::from_secs(120),
        || {
            let listed: serde_json::Value =
                serde_json::from_str(&d.ok(&["ls", "--json"])).expect("ls json");
            let Some(vm) = listed.as_array().and_then(|a| a.first()) else {
                return false;
            };
            name = vm["name"].as_str().unwrap_or_default().to_owned();
            vm["state"] == "running" && vm["ephemeral"] == true
        },
    );
    assert!(name.starts_with("run-"), "{name}");
    let id = d.inspect(&name)["id"].as_str().expect("id").to_owned();
    assert_confined(&d, &name);
    let out = client.wait_with_output().expect("wait skiff run");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    assert_eq!(d.ok(&["ls", "--json"]).trim(), "[]", "the run's VM is gone");
    assert_eq!(d.qemu_count(), 0);
    assert_eq!(cgroups_left(&id), Vec::<String>::new(), "cgroups left");
}

/// QEMU of `vm` under its seccomp filter, as nobody for a root daemon, in
/// the VM's own cgroup with its limits.
fn assert_confined(d: &Daemon, vm: &str) {
    let pid = d.inspect(vm)["qemu"]["pid"].as_i64().expect("qemu pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    assert_vm_cgroup(d, vm);
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .expect("nobody");
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .expect("Uid line");
        let uids: Vec<&str> = uid_line.split_whitespace().skip(1).collect();
        assert!(
            uids.iter().all(|u| *u == nobody.uid.to_string()),
            "{uid_line}"
        );
    }
}

/// The cgroup directories of VM `id` that still exist.
fn cgroups_left(id: &str) -> Vec<String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    ["memory", "cpu", ""]
        .iter()
        .filter_map(|c| {
            own.lines().find_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
                let hit = if c.is_empty() {
                    ctl.is_empty()
                } else {
                    ctl.split(',').any(|x| x == *c)
                };
                hit.then(|| {
                    let mount = if c.is_empty() {
                        "/sys/fs/cgroup".to_owned()
                    } else {
                        format!("/sys/fs/cgroup/{c}")
                    };
                    format!("{mount}{}/skiff/vm-{id}", path.trim_end_matches('/'))
                })
            })
        })
        .filter(|dir| std::path::Path::new(dir).exists())
        .collect()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// QEMU and its vsock helper sit in the VM's own cgroup, whose memory limit
/// is the guest's memory plus 256 MiB and whose CPU quota is its vCPUs plus
/// one core for device emulation.
fn assert_vm_cgroup(d: &Daemon, vm: &str) {
    let info = d.inspect(vm);
    let id = info["id"].as_str().expect("id");
    let memory_mib = info["spec"]["memory_mib"].as_u64().expect("memory");
    let vcpus = info["spec"]["vcpus"].as_u64().expect("vcpus");
    let limit = ((memory_mib + 256) * 1024 * 1024).to_string();
    let cgroup_of =
        |pid: i64| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let qemu = cgroup_of(info["qemu"]["pid"].as_i64().expect("qemu pid"));
    let helper = cgroup_of(info["vsock"]["pid"].as_i64().expect("vsock pid"));
    let line = |text: &str, controller: &str| -> Option<String> {
        text.lines().find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, c, path) = (p.next()?, p.next()?, p.next()?);
            let hit = if controller.is_empty() {
                c.is_empty()
            } else {
                c.split(',').any(|x| x == controller)
            };
            hit.then(|| path.to_owned())
        })
    };
    let suffix = format!("/skiff/vm-{id}");
    match line(&qemu, "memory") {
        Some(mem) => {
            assert!(mem.ends_with(&suffix), "QEMU's memory cgroup: {mem}");
            assert_eq!(
                line(&helper, "memory"),
                Some(mem.clone()),
                "the helper is with QEMU"
            );
            let dir = format!("/sys/fs/cgroup/memory{mem}");
            assert_eq!(
                std::fs::read_to_string(format!("{dir}/memory.limit_in_bytes"))
                    .expect("limit")
                    .trim(),
                limit
            );
            let cpu = line(&qemu, "cpu").expect("cpu cgroup");
            let quota =
                std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{cpu}/cpu.cfs_quota_us"))
                    .expect("quota");
            assert_eq!(quota.trim(), ((vcpus + 1) * 100_000).to_string());
        }
        None => {
            let path = line(&qemu, "").expect("v2 cgroup");
            assert!(path.ends_with(&suffix), "QEMU's cgroup: {path}");
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max"))
                .expect("memory.max");
            assert_eq!(max.trim(), limit);
            assert_eq!(
                line(&helper, ""),
                Some(path.clone()),
                "the helper is with QEMU"
            );
            let cpu =
                std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.max")).expect("cpu.max");
            assert_eq!(cpu.trim(), format!("{} 100000", (vcpus + 1) * 100_000));
        }
    }
}
