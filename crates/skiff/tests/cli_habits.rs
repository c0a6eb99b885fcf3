//! End-to-end tests of the command line as docker users type it, against
//! a real daemon and real VMs: `run -d --name`, `exec` without `--`,
//! `logs --tail`, several names per verb, `ls -q --filter`.

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout};
use std::time::Duration;

#[test]
fn a_detached_run_keeps_running_and_answers_docker_style_verbs() {
    let d = Daemon::start();
    let ticker = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done";
    // -d --name: this returns once the VM is up; its service is the command.
    let out = d.ok(&[
        "run", "-d", "--name", "tick", "-m", "128m", "--", "sh", "-c", ticker,
    ]);
    assert_eq!(out, "tick\n");
    let vm = d.inspect("tick");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["spec"]["memory_mib"], 128);

    // exec takes the command without `--`, its own flags included.
    let out = d.cli(&[
        "exec",
        "tick",
        "sh",
        "-c",
        "printf %s-%s \"$0\" \"$1\"",
        "-x",
        "y",
    ]);
    assert_eq!(stdout(&out), "-x-y", "{}", stderr(&out));
    let out = d.cli(&[
        "exec",
        "-e",
        "A=1",
        "-w",
        "/tmp",
        "tick",
        "sh",
        "-c",
        "echo $A $(pwd)",
    ]);
    assert_eq!(stdout(&out), "1 /tmp\n", "{}", stderr(&out));
    let out = d.cli(&["exec", "tick", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));

    // stats: what the VM's QEMU uses, from two samples.
    let rows: serde_json::Value =
        serde_json::from_str(&d.ok(&["stats", "--no-stream", "--json", "tick"])).expect("json");
    let row = &rows[0];
    assert_eq!(row["vm"], "tick");
    let cpu = row["cpu_percent"].as_f64().expect("a CPU rate");
    assert!((0.0..=400.0).contains(&cpu), "{row}");
    assert!(
        row["memory_bytes"].as_u64().is_some_and(|m| m > 16 << 20),
        "{row}"
    );
    assert_eq!(row["memory_limit_bytes"], 128u64 << 20);
    assert!(row["net_rx_bytes"].is_null(), "no network, no TAP: {row}");
    let table = d.ok(&["stats", "--no-stream"]);
    assert!(
        table.starts_with("NAME") && table.lines().nth(1).is_some_and(|l| l.starts_with("tick ")),
        "{table}"
    );
    let out = d.cli(&["stats", "--no-stream", "nope"]);
    assert!(
        stderr(&out).contains("no VM named \"nope\""),
        "{}",
        stderr(&out)
    );

    // logs --tail: the last lines only.
    d.wait_for("ticks in the log", Duration::from_secs(30), || {
        d.ok(&["logs", "tick"]).contains("tick-5")
    });
    let tail = d.ok(&["logs", "--tail", "2", "tick"]);
    let ticks: Vec<u32> = tail
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick-")?.parse().ok())
        .collect();
    assert_eq!(tail.lines().count(), 2, "{tail:?}");
    assert_eq!(ticks.len(), 2, "{tail:?}");
    assert_eq!(ticks[1], ticks[0] + 1, "{tail:?}");

    // logs -t: each line begins with the time the daemon saw it, in order,
    // within the last minute; --since leaves out what came before.
    let stamped = d.ok(&["logs", "-t", "--tail", "5", "tick"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut times = Vec::new();
    for line in stamped.lines() {
        let (time, rest) = line.split_once(' ').expect("a time, then the line");
        assert!(time.ends_with('Z') && time.contains('T'), "{line}");
        assert!(!rest.starts_with(' '), "{line}");
        times.push(time.to_owned());
    }
    assert_eq!(times.len(), 5, "{stamped}");
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{stamped}");
    let later = (now + 3600).to_string();
    assert_eq!(d.ok(&["logs", "--since", &later, "tick"]), "");
    let recent = d.ok(&["logs", "--since", "10m", "tick"]);
    assert!(recent.lines().any(|l| l.trim_end() == "tick-5"), "{recent}");
    let out = d.cli(&["logs", "--since", "yesterday", "tick"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not a time"), "{}", stderr(&out));

    // A second detached VM, named by skiff; both stopped with one verb.
    let other = d.ok(&["run", "-d", "--", "sleep", "600"]);
    let other = other.trim().to_owned();
    assert!(other.starts_with("run-"), "{other}");
    assert_eq!(
        d.ok(&["ls", "-q", "--filter", "state=running"])
            .lines()
            .count(),
        2
    );
    let out = d.ok(&["stop", "-t", "5", "tick", &other]);
    assert_eq!(out, format!("tick stopped\n{other} stopped\n"));
    assert_eq!(
        d.ok(&[
            "ls",
            "-q",
            "--filter",
            "state=stopped",
            "--filter",
            "name=ic"
        ]),
        "tick\n"
    );
    assert_eq!(d.ok(&["ls", "-q", "--filter", "name=nothing-like-it"]), "");
    let both: serde_json::Value =
        serde_json::from_str(&d.ok(&["inspect", "tick", &other])).expect("json");
    assert_eq!(both.as_array().map(Vec::len), Some(2));

    // -d --rm: the VM goes when its command ends, or when it is stopped.
    assert_eq!(
        d.ok(&["run", "-d", "--rm", "--name", "once", "--", "sh", "-c", "echo bye"]),
        "once\n"
    );
    d.wait_for("the ended --rm VM removed", Duration::from_secs(60), || {
        d.ok(&["ls", "-q", "--filter", "name=once"]).is_empty()
    });
    d.ok(&["run", "-d", "--rm", "--name", "held", "--", "sleep", "600"]);
    assert_eq!(d.ok(&["stop", "-t", "5", "held"]), "held stopped\n");
    assert_eq!(d.ok(&["ls", "-q", "--filter", "name=held"]), "");

    // Bad forms are one clear line each.
    let out = d.cli(&["run", "-m", "12q", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&out).contains("unknown unit"), "{}", stderr(&out));
    let out = d.cli(&["stop", "tick", "no-such-vm"]);
    assert_eq!(out.status.code(), Some(1), "one of them failed");
    assert!(
        stderr(&out).contains("no VM named \"no-such-vm\""),
        "{}",
        stderr(&out)
    );

    // --json on the verbs that change things.
    let removed: serde_json::Value =
        serde_json::from_str(&d.ok(&["rm", "--json", "tick", &other])).expect("json");
    assert_eq!(removed[0]["name"], "tick");
    assert_eq!(removed[1]["removed"], true);
    assert_eq!(d.ok(&["ls", "-q"]), "");
    let vol: serde_json::Value =
        serde_json::from_str(&d.ok(&["volume", "create", "--json", "--size", "64M", "v1"]))
            .expect("json");
    assert_eq!(
        (vol["name"].as_str(), vol["size_mib"].as_u64()),
        (Some("v1"), Some(64))
    );
    let out = d.cli(&["volume", "rm", "--json", "v1", "v2"]);
    assert_eq!(out.status.code(), Some(1), "v2 does not exist");
    let gone: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(
        (gone[0]["removed"].as_bool(), gone[1]["removed"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(
        gone[1]["error"].as_str().is_some_and(|e| e.contains("v2")),
        "{gone}"
    );
}

#[test]
fn version_shows_the_client_the_daemon_and_their_api() {
    let d = Daemon::start();
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(
        d.ok(&["version"]),
        format!(
            "client  skiff {v} (API v1)\ndaemon  skiff {v} (API v1) at {}\n",
            d.socket().display()
        )
    );
    let j: serde_json::Value = serde_json::from_str(&d.ok(&["version", "--json"])).expect("json");
    assert_eq!(
        (j["daemon"]["api"].as_str(), j["compatible"].as_bool()),
        (Some("v1"), Some(true))
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .env("SKIFF_SOCKET", d.runtime().join("nothing-here.sock"))
        .arg("version")
        .output()
        .expect("skiff version");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with(&format!(
            "client  skiff {v} (API v1)\ndaemon  not reachable: "
        )) && stdout(&out).contains("no daemon is running"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn completions_load_in_bash_and_man_pages_are_written() {
    let skiff = env!("CARGO_BIN_EXE_skiff");
    let script = format!(
        "source <({skiff} completions bash) || exit 9
COMP_WORDS=(skiff ex); COMP_CWORD=1; _skiff skiff ex skiff; echo \"${{COMPREPLY[@]}}\"
COMP_WORDS=(skiff run --de); COMP_CWORD=2; _skiff skiff --de run; echo \"${{COMPREPLY[@]}}\""
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "exec", "{lines:?}");
    assert_eq!(lines[1], "--detach", "{lines:?}");
    for shell in ["zsh", "fish"] {
        let out = std::process::Command::new(skiff)
            .args(["completions", shell])
            .output()
            .expect("completions");
        assert!(
            out.status.success() && stdout(&out).contains("skiff"),
            "{shell}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(skiff)
        .arg("man")
        .arg(dir.path())
        .output()
        .expect("man");
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(dir.path().join("skiff-run.1")).expect("skiff-run.1");
    assert!(
        page.starts_with(".ie") || page.contains(".TH skiff-run"),
        "{}",
        &page[..200.min(page.len())]
    );
    assert!(page.contains("detach"), "the page lists -d");
    assert!(
        dir.path().join("skiff.1").is_file() && dir.path().join("skiff-image-pull.1").is_file()
    );
}

#[test]
fn run_t_gives_the_command_a_terminal_of_the_clients_size() {
    let d = Daemon::start();
    // script(1) gives the CLI a terminal (80x24 by default, as it has none
    // of its own here); the guest's command sees a pseudo-terminal.
    let out = d.cli_on_terminal("run -t -- sh -c 'tty; stty size; exit 4'");
    let screen = stdout(&out);
    assert!(screen.contains("/dev/pts/"), "{screen:?}");
    assert!(
        screen.contains("24 80"),
        "the default size when the client's terminal has none: {screen:?}"
    );
    assert_eq!(out.status.code(), Some(4), "{screen:?}");

    // Without a terminal: one clear line, nothing booted.
    let out = d.cli(&["run", "-t", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("-t needs a terminal on stdin"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.qemu_count(), 0);
}
