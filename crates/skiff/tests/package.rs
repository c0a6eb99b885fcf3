//! The Debian package, as a user gets it: built by scripts/package-deb.sh,
//! installed with dpkg on this machine, its daemon serving a real VM to a
//! member of the `skiff` group (with the packaged agent and helpers, none
//! from the build tree), then removed and purged, leaving only the state
//! docs/daemon.md says it leaves. Needs root; changes the machine's
//! package database for the length of the test.

mod common;

use common::{stderr, stdout};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "skiffpkgtest";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The package's files, from the package database.
fn installed_files() -> Vec<String> {
    ok("dpkg", &["-L", "skiff"])
        .lines()
        .filter(|l| Path::new(l).is_file())
        .map(str::to_owned)
        .collect()
}

/// Undo what an earlier, failed run may have left.
fn clean_machine() {
    let _ = run("dpkg", &["--purge", "skiff"]);
    let _ = run("userdel", &[USER]);
}

#[test]
fn the_package_installs_serves_a_group_member_and_removes_cleanly() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("SKIFF_REQUIRE_PRIVILEGED").is_none(),
            "installing a package needs root"
        );
        return;
    }
    // Only a machine without a skiff of its own in use: the test purges.
    assert!(
        !Path::new("/var/lib/skiff/state.db").exists(),
        "/var/lib/skiff/state.db exists: a system skiff is in use here, and this test installs and purges the package"
    );
    let deb = common::debian_package();
    clean_machine();

    // Its contents: the binaries, the agent and helpers, the units, the
    // group, completions and man pages.
    let listing = ok("dpkg-deb", &["-c", &deb]);
    for path in [
        "./usr/bin/skiff",
        "./usr/lib/skiff/skiff-agent",
        "./usr/lib/skiff/vhost-device-vsock",
        "./usr/lib/skiff/virtiofsd",
        "./usr/lib/systemd/system/skiff.service",
        "./usr/lib/systemd/system/skiff.socket",
        "./usr/lib/sysusers.d/skiff.conf",
        "./usr/lib/tmpfiles.d/skiff.conf",
        "./usr/share/bash-completion/completions/skiff",
        "./usr/share/zsh/vendor-completions/_skiff",
        "./usr/share/fish/vendor_completions.d/skiff.fish",
        "./usr/share/man/man1/skiff.1.gz",
        "./usr/share/man/man1/skiff-run.1.gz",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{listing}"
        );
    }

    let install = run("dpkg", &["-i", &deb]);
    assert!(
        install.status.success(),
        "dpkg -i: {}{}",
        stdout(&install),
        stderr(&install)
    );
    assert!(ok("/usr/bin/skiff", &["--version"]).contains(env!("CARGO_PKG_VERSION")));
    assert!(
        ok("getent", &["group", "skiff"]).starts_with("skiff:"),
        "postinst makes the group"
    );
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/skiff.service").expect("unit");
    assert!(unit.contains("ExecStart=/usr/bin/skiff daemon\n"), "{unit}");
    assert!(
        unit.contains("SKIFF_AGENT=/usr/lib/skiff/skiff-agent"),
        "{unit}"
    );
    assert!(
        Path::new("/etc/systemd/system/sockets.target.wants/skiff.socket").exists(),
        "the socket is enabled"
    );
    let bash = run(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/skiff && complete -p skiff",
        ],
    );
    assert!(bash.status.success(), "{}", stderr(&bash));

    // The packaged daemon, run as the unit runs it (systemd's PATH, so the
    // helpers come from /usr/lib/skiff), serves a member of the group.
    let dir = tempfile::Builder::new()
        .prefix("skiff-pkg")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let socket = dir.path().join("run/skiff.sock");
    let cache = format!(
        "{}/.cache/skiff",
        std::env::var("HOME").expect("root has a HOME")
    );
    let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log");
    let mut daemon = Command::new("/usr/bin/skiff")
        .arg("daemon")
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("SKIFF_AGENT", "/usr/lib/skiff/skiff-agent")
        .env("SKIFF_CACHE_DIR", &cache)
        .env("SKIFF_STATE_DIR", dir.path().join("state"))
        .env("SKIFF_RUNTIME_DIR", dir.path().join("run"))
        .env("SKIFF_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("packaged daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        socket.exists(),
        "the packaged daemon did not listen: {}",
        std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
    );
    ok("useradd", &["--no-create-home", "--groups", "skiff", USER]);
    let socket_env = format!("SKIFF_SOCKET={}", socket.display());
    let as_member = |args: &[&str]| {
        let mut argv = vec!["-u", USER, "--", "env", "-i", &socket_env, "/usr/bin/skiff"];
        argv.extend_from_slice(args);
        run("runuser", &argv)
    };
    let out = as_member(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo hello from the package; exit 7",
    ]);
    let daemon_log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(7), "hello from the package\n"),
        "{}\ndaemon log:\n{}",
        stderr(&out),
        daemon_log()
    );
    let version = as_member(&["version"]);
    assert!(
        stdout(&version).contains("daemon"),
        "{}{}",
        stdout(&version),
        stderr(&version)
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    ok("userdel", &[USER]);

    // Remove: the package's files go, its configuration state stays until
    // purge; purge drops the cache and the unit links too.
    let files = installed_files();
    assert!(files.iter().any(|f| f == "/usr/bin/skiff"), "{files:?}");
    std::fs::create_dir_all("/var/cache/skiff").expect("cache dir");
    std::fs::write("/var/cache/skiff/left-by-the-test", b"x").expect("cache file");
    ok("dpkg", &["--remove", "skiff"]);
    for f in &files {
        assert!(!Path::new(f).exists(), "{f} survived dpkg --remove");
    }
    ok("dpkg", &["--purge", "skiff"]);
    assert!(
        !Path::new("/var/cache/skiff").exists(),
        "purge drops the cache"
    );
    assert!(
        !Path::new("/etc/systemd/system/sockets.target.wants/skiff.socket").exists(),
        "purge drops the unit links"
    );
    let status = run("dpkg-query", &["-W", "-f=${Status}", "skiff"]);
    assert!(
        !stdout(&status).contains("ok installed") && !stdout(&status).contains("config-files"),
        "{}",
        stdout(&status)
    );
    assert!(
        ok("getent", &["group", "skiff"]).starts_with("skiff:"),
        "the group stays, as Debian keeps system groups"
    );
}
