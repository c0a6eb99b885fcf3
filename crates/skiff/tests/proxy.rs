//! End-to-end tests of the reverse proxy: a daemon in a network namespace
//! with its proxy on the namespace's loopback, a service VM on a managed
//! network, and real clients (curl, a raw TLS-less socket) only.

mod common;

use common::daemon::Daemon;
use common::netns::NetNs;
use common::stderr;
use std::time::Duration;

const HTTP: &str = "127.0.0.1:18081";
const HTTPS: &str = "127.0.0.1:18443";

/// busybox httpd with a page that compresses well, a CGI script that shows
/// the forwarding headers it received, and a health check file.
const SERVICE: &str = r#"mkdir -p /www/cgi-bin && printf '#!/bin/sh\necho Content-Type: text/plain\necho\nenv | grep ^HTTP_X | sort\n' > /www/cgi-bin/headers && chmod +x /www/cgi-bin/headers && i=0 && while [ $i -lt 400 ]; do echo "line $i of a page that compresses well"; i=$((i+1)); done > /www/index.html && echo ok > /www/healthz && httpd -f -p 8080 -h /www"#;

fn curl(ns: &NetNs, args: &[&str]) -> (String, String) {
    let mut cmd = ns.command("curl");
    cmd.args([
        "-sS",
        "-m",
        "10",
        "--resolve",
        "app.test:18081:127.0.0.1",
        "--resolve",
        "app.test:18443:127.0.0.1",
    ]);
    let out = cmd.args(args).output().expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status(ns: &NetNs, url: &str) -> String {
    curl(ns, &["-k", "-o", "/dev/null", "-w", "%{http_code}", url]).0
}

fn expected_page() -> String {
    (0..400)
        .map(|i| format!("line {i} of a page that compresses well\n"))
        .collect()
}

#[test]
fn the_proxy_serves_a_vm_over_https_with_headers_compression_and_health() {
    let host = NetNs::new("x");
    let flags: Vec<String> = ["--http-listen", HTTP, "--https-listen", HTTPS]
        .map(String::from)
        .to_vec();
    let d = Daemon::start_wrapped(&flags, &host.exec_prefix());
    d.ok(&["network", "create", "web", "--subnet", "10.94.0.0/24"]);
    let spec = format!(
        r#"
[vm.site]
network = {{ mode = "bridge", network = "web" }}
command = '''{SERVICE}'''
restart = "always"
[vm.site.http]
domains = ["app.test"]
port = 8080
tls = "self-signed"
health = {{ path = "/healthz", interval = "1s", unhealthy_after = 2 }}
"#
    );
    let file = d.write_spec("site.toml", &spec);
    d.ok(&["apply", "-f", file.to_str().expect("utf8")]);
    d.ok(&["start", "site"]);
    d.wait_for("the service to answer", Duration::from_secs(30), || {
        status(&host, "https://app.test:18443/") == "200"
    });

    // HTTPS by SNI with the page; HTTP/2 when asked; HTTP redirects.
    let (page, err) = curl(&host, &["-k", "https://app.test:18443/"]);
    assert_eq!(page, expected_page(), "{err}");
    let (version, _) = curl(
        &host,
        &[
            "-k",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "https://app.test:18443/",
        ],
    );
    assert_eq!(version, "2");
    let (redirect, _) = curl(
        &host,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "http://app.test:18081/index.html?x=1",
        ],
    );
    assert_eq!(redirect, "308 https://app.test:18443/index.html?x=1");
    // A body declared larger than the limit is refused before it is sent.
    let big = host
        .command("python3")
        .args(["-c", "import socket\ns = socket.create_connection(('127.0.0.1', 18081), timeout=10)\ns.sendall(b'POST /x HTTP/1.1\\r\\nHost: app.test\\r\\nContent-Length: 70000000\\r\\n\\r\\n')\nprint(s.recv(64).split(b' ')[1].decode(), end='')\n"])
        .output()
        .expect("python3");
    // Plain HTTP to a TLS site redirects first; over HTTPS it would be 413.
    assert_eq!(String::from_utf8_lossy(&big.stdout), "308");
    let (too_big, _) = curl(
        &host,
        &[
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Length: 70000000",
            "-H",
            "Expect:",
            "--http1.1",
            "--max-time",
            "5",
            "-X",
            "POST",
            "https://app.test:18443/x",
        ],
    );
    assert_eq!(too_big, "413");
    // A host nobody serves.
    let (unknown, _) = curl(
        &host,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: other.test",
            "http://127.0.0.1:18081/",
        ],
    );
    assert_eq!(unknown, "404");

    // The forwarding headers the VM sees.
    let (headers, _) = curl(&host, &["-k", "https://app.test:18443/cgi-bin/headers"]);
    for expected in [
        "HTTP_X_FORWARDED_FOR=127.0.0.1",
        "HTTP_X_FORWARDED_HOST=app.test",
        "HTTP_X_FORWARDED_PROTO=https",
        "HTTP_X_REAL_IP=127.0.0.1",
    ] {
        assert!(
            headers.lines().any(|l| l == expected),
            "{expected} missing in:\n{headers}"
        );
    }

    // gzip and zstd, each decoding to the same bytes, and smaller on the wire.
    for encoding in ["gzip", "zstd"] {
        let (head, _) = curl(
            &host,
            &[
                "-k",
                "-H",
                &format!("Accept-Encoding: {encoding}"),
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                "https://app.test:18443/",
            ],
        );
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-encoding: {encoding}")),
            "{head}"
        );
        let size: usize = head
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .expect("size");
        assert!(
            size < expected_page().len() / 4,
            "{encoding}: {size} bytes on the wire"
        );
        let (decoded, _) = curl(
            &host,
            &[
                "-k",
                "--compressed",
                "-H",
                &format!("Accept-Encoding: {encoding}"),
                "https://app.test:18443/",
            ],
        );
        assert_eq!(decoded, expected_page(), "{encoding}");
    }

    // A stopped VM: 503 with a page naming it; back when started.
    d.ok(&["stop", "site"]);
    let (down, _) = curl(
        &host,
        &["-k", "-w", "\n%{http_code}", "https://app.test:18443/"],
    );
    assert!(
        down.ends_with("\n503") && down.contains("VM site is not running"),
        "{down}"
    );
    d.ok(&["start", "site"]);
    d.wait_for("the service to come back", Duration::from_secs(30), || {
        status(&host, "https://app.test:18443/") == "200"
    });

    // A failing health check: 503, then the restart policy brings it back.
    let restarts = d.inspect("site")["restarts"].as_i64().unwrap_or(0);
    d.ok(&["exec", "site", "--", "rm", "/www/healthz"]);
    // Between the failed checks and the restarted service, the proxy
    // answers 503 (failing its check, then not running while it reboots).
    let mut unavailable = String::new();
    d.wait_for("a 503 for the failing VM", Duration::from_secs(60), || {
        let (page, _) = curl(
            &host,
            &["-k", "-w", "\n%{http_code}", "https://app.test:18443/"],
        );
        let down = page.ends_with("\n503");
        if down {
            unavailable = page;
        }
        down
    });
    assert!(
        unavailable.contains("VM site is failing its health check")
            || unavailable.contains("VM site is not running"),
        "{unavailable}"
    );
    d.wait_for(
        "a restart by the health check",
        Duration::from_secs(60),
        || d.inspect("site")["restarts"].as_i64().unwrap_or(0) > restarts,
    );
    d.wait_for(
        "the service after its restart",
        Duration::from_secs(60),
        || status(&host, "https://app.test:18443/healthz") == "200",
    );

    // Metrics: parseable, with the proxy's requests and the VM's state.
    let metrics = std::process::Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(d.socket())
        .arg("http://skiff/metrics")
        .output()
        .expect("curl metrics");
    let text = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let parsed = std::process::Command::new("python3")
        .args(["-c", "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfams = {f.name: f for f in p(sys.stdin.read())}\nok = sum(s.value for s in fams['skiff_proxy_requests'].samples if s.labels.get('vm') == 'site' and s.labels.get('code') == '200')\nup = [s.value for s in fams['skiff_vm_up'].samples if s.labels['vm'] == 'site']\nprint(int(ok), int(up[0]))\n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("python3");
    let summary = String::from_utf8_lossy(&parsed.stdout).into_owned();
    let nums: Vec<u64> = summary
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        nums.len() == 2 && nums[0] >= 5 && nums[1] == 1,
        "{summary} {}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );

    // Apply errors: a domain another VM serves; a certificate that is not there.
    let clash = d.write_spec("clash.toml", "[vm.copy]\nnetwork = { mode = \"bridge\", network = \"web\" }\nhttp = { domains = [\"app.test\"], port = 80 }\n");
    let out = d.cli(&["apply", "-f", clash.to_str().expect("utf8")]);
    assert!(
        stderr(&out).contains("\"app.test\" is already served by VM \"site\""),
        "{}",
        stderr(&out)
    );
    let nocert = d.write_spec("nocert.toml", "[vm.other]\nnetwork = { mode = \"bridge\", network = \"web\" }\nhttp = { domains = [\"other.test\"], port = 80, tls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" } }\n");
    let out = d.cli(&["apply", "-f", nocert.to_str().expect("utf8")]);
    assert!(
        stderr(&out).contains("cannot read /nonexistent/c.pem"),
        "{}",
        stderr(&out)
    );
    assert!(
        d.cli(&["inspect", "copy"]).status.code() != Some(0),
        "nothing created"
    );
    assert!(
        d.cli(&["inspect", "other"]).status.code() != Some(0),
        "nothing created"
    );

    // WebSocket: the upgrade passes through and then bytes flow both ways,
    // over plain HTTP (ws.test) and over HTTPS (wss.test). The VMs' server
    // answers 101 and echoes raw bytes (busybox has no WebSocket server;
    // the proxy never looks inside frames anyway).
    let ws = d.write_spec(
        "ws.toml",
        &format!("[vm.ws]\nnetwork = {{ mode = \"bridge\", network = \"web\" }}\ncommand = '''{WS_ECHO}'''\nhttp = {{ domains = [\"ws.test\"], port = 9000 }}\n[vm.wss]\nnetwork = {{ mode = \"bridge\", network = \"web\" }}\ncommand = '''{WS_ECHO}'''\nhttp = {{ domains = [\"wss.test\"], port = 9000, tls = \"self-signed\" }}\n"),
    );
    d.ok(&["apply", "-f", ws.to_str().expect("utf8")]);
    d.ok(&["start", "ws"]);
    d.ok(&["start", "wss"]);
    for (domain, port) in [("ws.test", "18081"), ("wss.test", "18443")] {
        let client = || {
            host.command("python3")
                .args(["-c", WS_CLIENT, domain, port])
                .output()
                .expect("python3")
        };
        d.wait_for("the echo server", Duration::from_secs(30), || {
            String::from_utf8_lossy(&client().stdout).starts_with("101")
        });
        let echoed = client();
        assert_eq!(
            String::from_utf8_lossy(&echoed.stdout),
            "101 hello over the upgraded connection",
            "{domain}: {}",
            String::from_utf8_lossy(&echoed.stderr)
        );
    }

    d.ok(&["rm", "--force", "site", "ws", "wss"]);
    d.ok(&["network", "rm", "web"]);
}

/// A shell script behind `nc -ll -e`: read the request head, answer 101,
/// then echo bytes.
const WS_ECHO: &str = r#"printf '#!/bin/sh\nwhile read -r l; do l=$(printf "%%s" "$l" | tr -d "\\r"); [ -z "$l" ] && break; done\nprintf "HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n"\nexec cat\n' > /ws.sh && chmod +x /ws.sh && nc -ll -p 9000 -e /ws.sh"#;

/// A WebSocket handshake and an echo, to DOMAIN on PORT (18443: over TLS,
/// with SNI and HTTP/1.1 by ALPN, as browsers do for wss://).
const WS_CLIENT: &str = r#"
import socket, ssl, sys, time
domain, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
if port == 18443:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(s, server_hostname=domain)
s.sendall(b"GET /chat HTTP/1.1\r\nHost: " + domain.encode() + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
head = b""
deadline = time.time() + 10
while b"\r\n\r\n" not in head and time.time() < deadline:
    b = s.recv(1)
    if not b:
        break
    head += b
code = head.split(b" ")[1].decode() if b" " in head else "none"
msg = b"hello over the upgraded connection"
s.sendall(msg)
got = b""
while len(got) < len(msg):
    chunk = s.recv(len(msg) - len(got))
    if not chunk:
        break
    got += chunk
print(code, got.decode(), end="")
"#;
#[test]
fn certificates_come_from_files_reload_when_they_change_and_must_match() {
    let host = NetNs::new("y");
    let flags: Vec<String> = ["--https-listen", "127.0.0.1:18444"]
        .map(String::from)
        .to_vec();
    let d = Daemon::start_wrapped(&flags, &host.exec_prefix());
    let dir = d.dir.path().to_owned();
    let make = |name: &str, serial: &str| {
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
            ])
            .args([
                "-subj",
                "/CN=files.test",
                "-addext",
                "subjectAltName=DNS:files.test",
                "-set_serial",
                serial,
            ])
            .arg("-keyout")
            .arg(dir.join(format!("{name}.key")))
            .arg("-out")
            .arg(dir.join(format!("{name}.pem")))
            .output()
            .expect("openssl");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    };
    make("a", "0x1111");
    make("b", "0x2222");
    d.ok(&["network", "create", "tls", "--subnet", "10.96.0.0/24"]);
    // A key that is not the certificate's: refused at apply, nothing made.
    let spec = |cert: &str, key: &str| {
        format!(
            "[vm.files]\nnetwork = {{ mode = \"bridge\", network = \"tls\" }}\ncommand = \"mkdir -p /www && echo files > /www/index.html && httpd -f -p 80 -h /www\"\nhttp = {{ domains = [\"files.test\"], port = 80, tls = {{ cert = \"{}\", key = \"{}\" }} }}\n",
            dir.join(cert).display(),
            dir.join(key).display()
        )
    };
    let bad = d.write_spec("bad.toml", &spec("a.pem", "b.key"));
    let out = d.cli(&["apply", "-f", bad.to_str().expect("utf8")]);
    assert!(
        stderr(&out).contains("b.key is not the key of the certificate in"),
        "{}",
        stderr(&out)
    );
    assert!(
        d.cli(&["inspect", "files"]).status.code() != Some(0),
        "nothing created"
    );

    let good = d.write_spec("good.toml", &spec("a.pem", "a.key"));
    d.ok(&["apply", "-f", good.to_str().expect("utf8")]);
    d.ok(&["start", "files"]);
    let serial = || {
        let out = host
            .command("sh")
            .args(["-c", "echo | openssl s_client -connect 127.0.0.1:18444 -servername files.test 2>/dev/null | openssl x509 -noout -serial"])
            .output()
            .expect("s_client");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(serial(), "serial=1111");
    // `start` returns once the service started; httpd may need a moment
    // to listen (the proxy answers 502 until then).
    let fetch = || {
        let out = host
            .command("curl")
            .args(["-sS", "-m", "10", "--cacert"])
            .arg(dir.join("a.pem"))
            .args([
                "--resolve",
                "files.test:18444:127.0.0.1",
                "https://files.test:18444/",
            ])
            .output()
            .expect("curl");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut fetched = fetch();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fetched.0.contains("502 Bad Gateway") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        fetched = fetch();
    }
    let (page, err) = fetched;
    assert_eq!(
        page, "files\n",
        "verified against the file's certificate: {err}"
    );
    // New files in place: the next handshake uses them, no restart.
    std::thread::sleep(Duration::from_millis(1100)); // a new modification time
    std::fs::copy(dir.join("b.key"), dir.join("a.key")).expect("key");
    std::fs::copy(dir.join("b.pem"), dir.join("a.pem")).expect("cert");
    d.wait_for("the new certificate", Duration::from_secs(10), || {
        serial() == "serial=2222"
    });
    d.ok(&["rm", "--force", "files"]);
    d.ok(&["network", "rm", "tls"]);
}

#[test]
fn a_request_through_the_proxy_wakes_a_vm_that_fell_asleep() {
    let host = NetNs::new("z");
    let flags: Vec<String> = ["--http-listen", HTTP].map(String::from).to_vec();
    let d = Daemon::start_wrapped(&flags, &host.exec_prefix());
    d.ok(&["network", "create", "web", "--subnet", "10.95.0.0/24"]);
    let spec = r#"
[vm.nap]
pausable = true
sleep_after = "2s"
memory = "256M"
network = { mode = "bridge", network = "web" }
command = '''mkdir -p /www && echo awake > /www/index.html && httpd -f -p 8080 -h /www'''
[vm.nap.http]
domains = ["nap.test"]
port = 8080
"#;
    let file = d.write_spec("nap.toml", spec);
    d.ok(&["apply", "-f", file.to_str().expect("utf8")]);
    d.ok(&["start", "nap"]);
    let get = || curl(&host, &["-H", "Host: nap.test", "http://127.0.0.1:18081/"]);
    d.wait_for("the service to answer", Duration::from_secs(30), || {
        get().0 == "awake\n"
    });
    d.wait_for("the idle VM to sleep", Duration::from_secs(60), || {
        d.inspect("nap")["state"] == "paused"
    });
    assert_eq!(d.qemu_count(), 0);
    // The first request wakes it and gets the page from the same server.
    let (page, err) = get();
    assert_eq!(page, "awake\n", "{err}\n{}", d.log());
    assert_eq!(d.inspect("nap")["state"], "running");
    d.ok(&["rm", "-f", "nap"]);
}
