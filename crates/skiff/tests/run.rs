//! End-to-end tests of `skiff run`: each boots real microVMs with QEMU
//! (under TCG on hosts without hardware KVM).

mod common;

use common::{sha256_hex, stderr, stdout, Env};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn uname_prints_the_guest_kernel_release() {
    let env = Env::new();
    let image = common::prepared_image(&env);
    let out = env.run(&[], &["uname", "-r"], None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        image["kernel_release"].as_str().expect("release")
    );
    env.assert_clean();
}

#[test]
fn exit_codes_follow_the_guest_command() {
    let env = Env::new();
    for (argv, code) in [
        (vec!["true"], 0),
        (vec!["false"], 1),
        (vec!["sh", "-c", "exit 3"], 3),
        (vec!["sh", "-c", "kill -9 $$"], 128 + 9),
    ] {
        let out = env.run(&[], &argv, None);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{argv:?}: stderr: {}",
            stderr(&out)
        );
    }
    env.assert_clean();
}

#[test]
fn a_missing_command_exits_127_with_a_shell_like_message() {
    let env = Env::new();
    let out = env.run(&[], &["no-such-command", "arg"], None);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains("no-such-command: command not found"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    env.assert_clean();
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let env = Env::new();
    let out = env.run(&[], &["sh", "-c", "echo out; echo err >&2; exit 3"], None);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    env.assert_clean();
}

#[test]
fn stdin_reaches_the_guest_command() {
    let env = Env::new();
    let out = env.run(&[], &["cat"], Some(b"hello\nworld\n"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello\nworld\n");
    // Bytes in, count out: stdin is binary-safe and ends with EOF.
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let out = env.run(&[], &["sh", "-c", "wc -c"], Some(&input));
    assert_eq!(stdout(&out).trim(), "300000");
    env.assert_clean();
}

#[test]
fn cpus_memory_env_and_workdir_are_applied() {
    let env = Env::new();
    let out = env.run(
        &[
            "--cpus",
            "2",
            "--memory",
            "512",
            "--env",
            "A=1",
            "-e",
            "B=two words",
            "--workdir",
            "/tmp",
        ],
        &[
            "sh",
            "-c",
            "nproc; echo $A; echo $B; pwd; awk '/MemTotal/ {print $2}' /proc/meminfo",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..4], ["2", "1", "two words", "/tmp"], "{text}");
    let mem_kib: u64 = lines[4].parse().expect("MemTotal");
    assert!(
        (400 * 1024..=512 * 1024).contains(&mem_kib),
        "MemTotal {mem_kib} KiB for --memory 512"
    );
    env.assert_clean();
}

#[test]
fn ten_mib_of_output_arrives_intact_and_in_order() {
    let env = Env::new();
    // The guest hashes what it sends; the host hashes what it got.
    let script =
        "head -c 10485760 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob";
    let out = env.run(&["--memory", "256"], &["sh", "-c", script], None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    let guest_hash = stderr(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(sha256_hex(&out.stdout), guest_hash);

    // Ordered text the host can regenerate exactly.
    let out = env.run(&[], &["seq", "1", "1500000"], None);
    let expected: String = (1..=1_500_000).map(|i| format!("{i}\n")).collect();
    assert!(out.stdout.len() > 10 * 1024 * 1024 - 2_000_000);
    assert!(
        out.stdout == expected.as_bytes(),
        "seq output differs from the expected sequence"
    );
    env.assert_clean();
}

#[test]
fn three_vms_run_concurrently_without_interfering() {
    let env = Env::new();
    let children: Vec<_> = (0..3)
        .map(|i| {
            env.skiff()
                .args([
                    "run",
                    "-q",
                    "--env",
                    &format!("ID={i}"),
                    "--",
                    "sh",
                    "-c",
                    "echo start-$ID; sleep 1; echo end-$ID >&2; exit $ID",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("wait");
        assert_eq!(
            out.status.code(),
            Some(i as i32),
            "vm {i}: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), format!("start-{i}\n"));
        assert_eq!(stderr(&out), format!("end-{i}\n"));
    }
    env.assert_clean();
}

/// A `skiff run` of `echo started; sleep 600`, with `extra` options; its
/// stdout's first line arrives on the returned channel.
fn sleeper(env: &Env, extra: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = env
        .skiff()
        .arg("run")
        .arg("-q")
        .args(extra)
        .args(["--", "sh", "-c", "echo started; sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line.trim_end().to_owned());
    });
    (child, rx)
}

fn listed_vms(env: &Env) -> Vec<serde_json::Value> {
    let out = env.skiff().args(["ls", "--json"]).output().expect("ls");
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("ls json")
}

#[test]
fn signals_and_a_killed_client_tear_the_vm_down() {
    use nix::sys::signal::Signal;
    let env = Env::new();
    // Through the daemon: Ctrl-C, SIGTERM, SIGHUP, and a client killed
    // outright (the daemon notices the closed connection); and a
    // standalone run's Ctrl-C.
    let cases = [
        (Signal::SIGINT, false),
        (Signal::SIGTERM, false),
        (Signal::SIGHUP, false),
        (Signal::SIGKILL, false),
        (Signal::SIGINT, true),
    ];
    // The daemon first (a run would start it, but concurrent first runs
    // would race to).
    let out = env.run(&[], &["true"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut runs: Vec<_> = cases
        .iter()
        .map(|(_, standalone)| sleeper(&env, if *standalone { &["--standalone"] } else { &[] }))
        .collect();
    for (child, started) in &mut runs {
        let line = started.recv_timeout(Duration::from_secs(120));
        assert_eq!(line.as_deref(), Ok("started"), "run {}", child.id());
    }
    // While they run, the daemon's runs are listed as `run-ID`, running.
    let listed = listed_vms(&env);
    assert_eq!(listed.len(), 4, "{listed:?}");
    for vm in &listed {
        let id = vm["id"].as_str().expect("id");
        assert_eq!(vm["name"], format!("run-{id}"), "{vm}");
        assert_eq!(vm["state"], "running", "{vm}");
    }
    for (i, ((signal, standalone), (child, _))) in cases.iter().zip(&mut runs).enumerate() {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, *signal).expect("signal");
        let start = Instant::now();
        let status = child.wait().expect("wait");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{signal} took {:?}",
            start.elapsed()
        );
        use std::os::unix::process::ExitStatusExt;
        if *signal == Signal::SIGKILL {
            assert_eq!(status.signal(), Some(9));
        } else {
            assert_eq!(status.code(), Some(128 + *signal as i32), "{signal}");
        }
        // A signalled client returns once its VM is gone; a killed one
        // cannot wait, and the daemon tears down on its own.
        if !standalone && *signal != Signal::SIGKILL {
            assert_eq!(listed_vms(&env).len(), 3 - i, "after {signal}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listed_vms(&env).is_empty() {
        assert!(Instant::now() < deadline, "the killed client's VM stayed");
        std::thread::sleep(Duration::from_millis(200));
    }
    env.assert_clean();
}

#[test]
fn a_guest_that_dies_mid_command_is_an_error_not_a_hang() {
    let env = Env::new();
    let start = Instant::now();
    // `poweroff -f` stops the VM under the running command.
    let out = env.run(
        &[],
        &["sh", "-c", "echo before; poweroff -f; sleep 600"],
        None,
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(125), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "before\n");
    let err = stderr(&out);
    assert!(
        err.contains("VM stopped") || err.contains("control channel"),
        "{err}"
    );
    env.assert_clean();
}

#[test]
fn run_starts_a_daemon_when_none_answers_and_standalone_needs_none() {
    let env = Env::new();
    let state = env.runtime.path().join("state");
    let out = env.run(&["--standalone"], &["sh", "-c", "echo alone; exit 4"], None);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stdout(&out), "alone\n");
    assert!(
        !state.join("daemon.pid").exists(),
        "--standalone must not start a daemon"
    );

    let out = env.run(&[], &["echo", "through-daemon"], None);
    assert_eq!(stdout(&out), "through-daemon\n", "{}", stderr(&out));
    assert!(
        state.join("daemon.pid").exists(),
        "skiff run started a daemon"
    );
    let ls = env.skiff().args(["ls", "--json"]).output().expect("ls");
    assert!(
        ls.status.success(),
        "the started daemon answers: {}",
        stderr(&ls)
    );
    // The second run reuses it.
    let pid = std::fs::read_to_string(state.join("daemon.pid")).expect("pid");
    let out = env.run(&[], &["true"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(state.join("daemon.pid")).expect("pid"),
        pid
    );
    env.assert_clean();
}

#[test]
fn run_shares_host_directories_read_only_or_writable() {
    let env = Env::new();
    let host = tempfile::tempdir().expect("tempdir");
    let (src, out) = (host.path().join("src"), host.path().join("out"));
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(src.join("in.txt"), "input\n").expect("write");
    common::give_to_share_owner(&out);
    let ro = format!("{}:/work:ro", src.display());
    let rw = format!("{}:/out", out.display());
    let script = "cat /work/in.txt && echo result > /out/o.txt && (echo x > /work/y 2>/dev/null && echo WROTE || echo DENIED)";
    let o = env.run(&["-v", &ro, "-v", &rw], &["sh", "-c", script], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "input\nDENIED\n");
    assert_eq!(
        std::fs::read_to_string(out.join("o.txt")).expect("read"),
        "result\n"
    );
    assert!(!src.join("y").exists());
    let bad = env.run(&["-v", "/nonexistent:/x"], &["true"], None);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("/nonexistent is not an existing directory"),
        "{}",
        stderr(&bad)
    );
    env.assert_clean();
}

#[test]
fn a_host_directory_boots_as_the_root_with_an_overlay_or_read_write() {
    let env = Env::new();
    let host = tempfile::tempdir().expect("tempdir");
    let root = host.path().join("root");
    common::busybox_rootfs(&root);
    let root_s = root.to_str().expect("utf8");
    // Default: the directory is the lower layer; writes stay in the guest.
    let out = env.run(
        &["--rootfs", root_s],
        &[
            "sh",
            "-c",
            "cat /etc/marker && echo x > /etc/new && cat /etc/new && test ! -e /init",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from-the-host-rootfs\nx\n");
    assert!(
        !root.join("etc/new").exists(),
        "the overlay kept the host directory untouched"
    );
    // --rootfs-rw: writes land in the directory, as its owner.
    common::give_to_share_owner(&root);
    let out = env.run(
        &["--rootfs", root_s, "--rootfs-rw"],
        &["sh", "-c", "echo kept > /etc/kept"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/kept")).expect("read"),
        "kept\n"
    );
    let bad = env.run(&["--rootfs", "/nonexistent/root"], &["true"], None);
    assert_eq!(bad.status.code(), Some(125));
    assert!(
        stderr(&bad).contains("--rootfs /nonexistent/root is not an existing directory"),
        "{}",
        stderr(&bad)
    );
    env.assert_clean();
}
