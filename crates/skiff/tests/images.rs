//! End-to-end tests of images built from Debian packages (debootstrap, so
//! root and a reachable Debian mirror are needed, as for the kernel).

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout, Env};

fn recipe(name: &str) -> String {
    format!("{}/../../images/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_python_image_runs_python_in_run_and_in_a_daemon_vm() {
    let env = Env::new();
    let out = env
        .skiff()
        .args(["image", "build", "--json", "-f", &recipe("python")])
        .output()
        .expect("build");
    assert!(out.status.success(), "image build failed: {}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["name"], "python");
    // Content-addressed: a second build is found, not rebuilt (fast, same hash).
    let again = env
        .skiff()
        .args(["image", "build", "--json", "-f", &recipe("python")])
        .output()
        .expect("build");
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(again["hash"], info["hash"]);

    let out = env.run(
        &["--image", "python"],
        &["python3", "-c", "print(6*7)"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "42\n");
    let out = env.run(&["--image", "nosuch"], &["true"], None);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("no image named \"nosuch\""),
        "{}",
        stderr(&out)
    );
    env.assert_clean();

    let d = Daemon::start();
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
