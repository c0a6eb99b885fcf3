//! End-to-end tests of user-mode networking: real VMs, traffic only on the
//! host's loopback (QEMU's user-mode NAT maps the guest's 10.0.2.2 to it).

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout, Env};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// GET / on 127.0.0.1:port; the body, or None if nothing answered.
fn http_get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let body = resp.split("\r\n\r\n").nth(1)?.to_owned();
    (!body.is_empty()).then_some(body)
}

fn poll_http(port: u16, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(body) = http_get(port) {
            return Some(body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

const GUEST_HTTPD: &str =
    "mkdir -p /www && echo hello-from-guest > /www/index.html && httpd -f -p 8080 -h /www";

#[test]
fn without_net_the_guest_has_no_network_device() {
    let env = Env::new();
    let out = env.run(&[], &["ls", "/sys/class/net"], None);
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        ["lo"],
        "{}",
        stderr(&out)
    );
    env.assert_clean();
}

#[test]
fn user_mode_egress_reaches_a_server_on_the_host() {
    let env = Env::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 15\r\n\r\nhello-from-host");
        }
    });
    let url = format!("http://10.0.2.2:{port}/");
    let out = env.run(&["--net", "user"], &["wget", "-q", "-O", "-", &url], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello-from-host");
    let out = env.run(
        &["--net", "user"],
        &[
            "sh",
            "-c",
            "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; cat /etc/resolv.conf",
        ],
        None,
    );
    assert_eq!(
        stdout(&out),
        "inet 10.0.2.15/24\nnameserver 10.0.2.3\n",
        "{}",
        stderr(&out)
    );
    env.assert_clean();
}

#[test]
fn a_port_forward_reaches_the_guest_and_ctrl_c_cleans_up() {
    let env = Env::new();
    let port = common::free_port();
    let mut child = env
        .skiff()
        .args([
            "run",
            "-q",
            "-p",
            &format!("127.0.0.1:{port}:8080"),
            "--",
            "sh",
            "-c",
            GUEST_HTTPD,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let body = poll_http(port, Duration::from_secs(60));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    assert_eq!(body.as_deref(), Some("hello-from-guest\n"));
    assert_eq!(status.code(), Some(130));
    env.assert_clean();
    assert!(http_get(port).is_none(), "the forward is gone with the VM");
}

#[test]
fn a_host_port_in_use_is_a_clear_error_with_nothing_left() {
    let env = Env::new();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = env.run(&["-p", &format!("127.0.0.1:{port}:80")], &["true"], None);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{port}")) && err.to_lowercase().contains("forward"),
        "{err}"
    );
    env.assert_clean();
    let out = env.run(&["--net", "none", "-p", "8080:80"], &["true"], None);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("port forwards need a network; use --net user"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_daemon_vm_serves_through_its_spec_forward() {
    let d = Daemon::start();
    let port = common::free_port();
    let spec = d.write_spec(
        "web.toml",
        &format!("[vm.web]\nnetwork = \"user\"\nforward_ports = [\"127.0.0.1:{port}:8080\"]\ncommand = \"{GUEST_HTTPD}\"\n"),
    );
    d.ok(&["apply", "-f", spec.to_str().expect("utf8")]);
    d.ok(&["start", "web"]);
    assert_eq!(
        poll_http(port, Duration::from_secs(60)).as_deref(),
        Some("hello-from-guest\n")
    );
    d.ok(&["stop", "web"]);
    assert!(http_get(port).is_none());
    d.ok(&["rm", "web"]);
}

/// `wget` in the guest, printing what it fetched and then `rc=N`: the bytes
/// decide, not the exit code. (busybox 1.35's `wget -T` crashes after a
/// successful transfer, before its output is out, so the time limit comes
/// from `timeout`.)
fn guest_fetch(url: &str) -> Vec<String> {
    vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!("timeout 5 wget -q -O - {url}; echo rc=$?"),
    ]
}

#[test]
fn egress_none_cuts_the_guest_off_but_keeps_its_forwards() {
    let d = Daemon::start();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let host_port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            // Read the request first: closing with it unread resets the
            // connection, and the guest would see an error, not the page.
            let _ = s.read(&mut [0u8; 1024]);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nreached-host");
        }
    });
    let url = format!("http://10.0.2.2:{host_port}/");
    let fetch = guest_fetch(&url);
    let fetch: Vec<&str> = fetch.iter().map(String::as_str).collect();
    // The positive control: the same fetch from a VM without the
    // restriction gets the bytes, so an empty answer below is the rule's.
    let mut open = vec!["run", "-q", "--net", "user", "--"];
    open.extend(&fetch);
    let out = d.cli(&open);
    assert!(
        stdout(&out).starts_with("reached-host"),
        "an unrestricted guest reaches the host: {} {}",
        stdout(&out),
        stderr(&out)
    );
    let port = common::free_port();
    d.boot(
        "locked",
        &format!(
            "[vm.locked]\nnetwork = [{{ mode = \"user\", egress = \"none\" }}]\nforward_ports = [\"127.0.0.1:{port}:8080\"]\ncommand = \"{GUEST_HTTPD}\"\n"
        ),
    );
    let mut exec = vec!["exec", "locked", "--"];
    exec.extend(&fetch);
    let out = d.cli(&exec);
    let got = stdout(&out);
    assert!(
        got.starts_with("rc=") && !got.contains("reached-host"),
        "egress must be blocked, the guest got: {got:?} {}",
        stderr(&out)
    );
    assert_eq!(
        poll_http(port, Duration::from_secs(60)).as_deref(),
        Some("hello-from-guest\n"),
        "forwards still reach the guest"
    );
    d.ok(&["rm", "-f", "locked"]);
}

#[test]
fn a_spec_on_a_missing_network_or_with_two_nics_is_refused_whole() {
    let d = Daemon::start();
    let spec = d.write_spec(
        "br.toml",
        "[vm.br]\nnetwork = [{ mode = \"bridge\", network = \"lan\" }]\n",
    );
    let out = d.cli(&["create", "-f", spec.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("no network named \"lan\"; create it with `skiff network create lan"),
        "{}",
        stderr(&out)
    );
    let two = d.write_spec(
        "two.toml",
        "[vm.two]\nnetwork = [{ mode = \"user\" }, { mode = \"bridge\", network = \"lan\" }]\n",
    );
    let out = d.cli(&["create", "-f", two.to_str().expect("utf8")]);
    assert!(
        stderr(&out).contains("more than one network interface not supported"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.ok(&["ls", "--json"]).trim(), "[]", "nothing created");
    assert!(d.ok(&["network", "ls", "--json"]).trim() == "[]");
}
