//! End-to-end tests of the errors a user of `skiff run` meets: each must be
//! clear, use the documented exit code, and leave nothing behind.

mod common;

use common::{stderr, Env};

#[test]
fn invalid_flag_values_are_usage_errors_naming_the_flag() {
    let env = Env::new();
    for (args, needle) in [
        (vec!["--memory", "0"], "--memory"),
        (vec!["--cpus", "abc"], "--cpus"),
        (vec!["--cpus", "0"], "--cpus"),
        (vec!["--env", "NOEQUALS"], "KEY=VALUE"),
        (vec!["--accel", "hvf"], "--accel"),
    ] {
        let out = env.run(&args, &["true"], None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    let out = env.skiff().args(["run"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("COMMAND"), "{}", stderr(&out));
    env.assert_clean();
}

#[test]
fn missing_qemu_names_the_package_and_leaves_nothing() {
    let env = Env::new();
    common::prepared_image(&env);
    let empty_path = tempfile::tempdir().expect("tempdir");
    let out = env
        .skiff()
        .env("PATH", empty_path.path())
        .args(["run", "-q", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("qemu-system-x86_64 is not installed") && err.contains("qemu-system-x86"),
        "{err}"
    );
    env.assert_clean();
}

#[test]
fn a_kernel_that_does_not_exist_says_how_to_supply_one() {
    let env = Env::new();
    let out = env.run(&["--kernel", "/nonexistent/vmlinuz"], &["true"], None);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/vmlinuz") && err.contains("--kernel"),
        "{err}"
    );
    env.assert_clean();
}

#[test]
fn no_kernel_and_no_way_to_fetch_one_says_how_to_supply_one() {
    let env = Env::new();
    let empty_cache = tempfile::tempdir().expect("tempdir");
    let no_tools = tempfile::tempdir().expect("tempdir");
    let out = env
        .skiff()
        .env("SKIFF_CACHE_DIR", empty_cache.path())
        .env("PATH", no_tools.path())
        .args(["run", "-q", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(err.contains("apt-cache is not installed"), "{err}");
    assert!(err.contains("--kernel PATH"), "{err}");
    // Nothing half-fetched is left in the cache.
    let kernels = empty_cache.path().join("kernels");
    let left: Vec<_> = std::fs::read_dir(&kernels)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    env.assert_clean();
}

#[test]
fn a_guest_that_is_not_ready_in_time_reports_its_console() {
    let env = Env::new();
    let image = common::prepared_image(&env);
    // A kernel with no initramfs agent: give it an init that never connects.
    let dir = tempfile::tempdir().expect("tempdir");
    let silent = dir.path().join("silent-agent");
    std::fs::copy("/bin/busybox", &silent).expect("copy busybox");
    let out = env
        .skiff()
        .env("SKIFF_AGENT", &silent)
        .env("SKIFF_CACHE_DIR", dir.path().join("cache"))
        .args(["run", "-q", "--boot-timeout", "8", "--kernel"])
        .arg(common::path(&image, "kernel"))
        .args(["--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(err.contains("did not become ready within 8s"), "{err}");
    assert!(err.contains("last console lines"), "{err}");
    env.assert_clean();
}

#[test]
fn the_image_is_cached_and_rebuilt_when_the_agent_changes() {
    let env = Env::new();
    let image = common::prepared_image(&env);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let kernel = common::path(&image, "kernel");
    let release = image["kernel_release"].as_str().expect("release");
    let modules = kernel
        .parent()
        .and_then(|b| b.parent())
        .expect("kernel root")
        .join("lib/modules")
        .join(release);
    let prepare = |agent: Option<&std::path::Path>| {
        let mut cmd = env.skiff();
        cmd.env("SKIFF_CACHE_DIR", &cache)
            .args(["image", "prepare", "--json", "--kernel"])
            .arg(&kernel)
            .arg("--modules")
            .arg(&modules);
        if let Some(a) = agent {
            cmd.env("SKIFF_AGENT", a);
        }
        let out = cmd.output().expect("prepare");
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let first = prepare(None);
    assert_eq!(first["built"], true);
    let second = prepare(None);
    assert_eq!(second["built"], false);
    assert_eq!(first["initrd"], second["initrd"]);

    // A different agent binary (one extra byte) is a different image.
    let agent = dir.path().join("agent");
    let current = env
        .skiff()
        .args(["image", "prepare", "--json"])
        .output()
        .expect("prepare");
    assert!(current.status.success());
    let mut bytes = std::fs::read(agent_path()).expect("agent binary");
    bytes.push(0);
    std::fs::write(&agent, bytes).expect("write agent");
    let third = prepare(Some(&agent));
    assert_eq!(third["built"], true);
    assert_ne!(third["initrd"], first["initrd"]);
}

fn agent_path() -> std::path::PathBuf {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_skiff"));
    let target = exe.parent().and_then(|d| d.parent()).expect("target dir");
    target.join("x86_64-unknown-linux-gnu/release/skiff-agent")
}
