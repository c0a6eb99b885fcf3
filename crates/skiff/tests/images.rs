//! End-to-end tests of images built from Debian packages (debootstrap, so
//! root and a reachable Debian mirror are needed, as for the kernel).

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout, Env};

fn recipe(name: &str) -> String {
    format!("{}/../../images/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

/// The identity of a file: a rebuild replaces it (new inode, new mtime).
fn identity(p: &std::path::Path) -> (u64, std::time::SystemTime) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.ino(), m.modified().expect("mtime"))
}

#[test]
fn the_python_image_runs_python_in_run_and_in_a_daemon_vm() {
    let env = Env::new();
    let cache = common::private_cache(&env);
    let build = || {
        env.skiff()
            .env("SKIFF_CACHE_DIR", cache.path())
            .args(["image", "build", "--json", "-f", &recipe("python")])
            .output()
            .expect("build")
    };
    let out = build();
    assert!(out.status.success(), "image build failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("skiff: debootstrap"),
        "the first build in an empty cache builds: {}",
        stderr(&out)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["name"], "python");
    let root = common::path(&info, "root");
    let meta = root.parent().expect("image directory").join("image.json");
    let before = (identity(&root), identity(&meta));
    // Content-addressed: a second build finds the image and builds nothing.
    let again = build();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stderr(&again),
        "",
        "the second build did some work: {}",
        stderr(&again)
    );
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(again["hash"], info["hash"]);
    assert_eq!((identity(&root), identity(&meta)), before, "rebuilt");
    let versions: Vec<_> = std::fs::read_dir(cache.path().join("images/python"))
        .expect("images/python")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "one build, no staging left: {versions:?}"
    );

    let mut run = env.skiff();
    // The whole standard library (not python3-minimal's), and a venv with
    // its own pip.
    let script = "import dataclasses, sqlite3, venv, ensurepip; print(6*7)";
    let check = format!(
        "python3 -c '{script}' && python3 -m venv /tmp/v && /tmp/v/bin/pip --version | cut -d' ' -f1"
    );
    run.env("SKIFF_CACHE_DIR", cache.path()).args([
        "run", "-q", "--memory", "512", "--image", "python", "--", "sh", "-c", &check,
    ]);
    let out = common::output_with_input(&mut run, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "42\npip\n");
    let out = env.run(&["--image", "nosuch"], &["true"], None);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("no image named \"nosuch\""),
        "{}",
        stderr(&out)
    );
    env.assert_clean();

    let cache_dir = cache.path().to_string_lossy().into_owned();
    let d = Daemon::start_with_env(vec![("SKIFF_CACHE_DIR", cache_dir)]);
    d.boot("py", "[vm.py]\nimage = \"python\"\n");
    let out = d.cli(&[
        "exec",
        "py",
        "--",
        "python3",
        "-c",
        "import sys; print(sys.version_info[0])",
    ]);
    assert_eq!(stdout(&out), "3\n", "{}", stderr(&out));
    d.ok(&["rm", "-f", "py"]);
}

#[test]
fn a_bad_recipe_is_refused_with_its_problem() {
    let env = Env::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"Bad Name\"\n").expect("write");
    let out = env
        .skiff()
        .args(["image", "build", "-f"])
        .arg(&bad)
        .output()
        .expect("build");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("name \"Bad Name\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_node_image_runs_node_and_npm() {
    let env = Env::new();
    let cache = common::private_cache(&env);
    let mut build = env.skiff();
    build.env("SKIFF_CACHE_DIR", cache.path()).args([
        "image",
        "build",
        "--json",
        "-f",
        &recipe("node"),
    ]);
    let out = common::output_with_input(&mut build, None);
    assert!(out.status.success(), "image build failed: {}", stderr(&out));
    let mut run = env.skiff();
    run.env("SKIFF_CACHE_DIR", cache.path()).args([
        "run",
        "-q",
        "--memory",
        "512",
        "--image",
        "node",
        "--",
        "sh",
        "-c",
        "node -e 'console.log(6*7)' && npm --version | cut -d. -f1",
    ]);
    let out = common::output_with_input(&mut run, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"42"), "{text}");
    assert!(
        lines
            .get(1)
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|major| major >= 9),
        "npm's major version: {text}"
    );
    env.assert_clean();
}
