//! `skiff-fake-vm`: the test double behind the daemon's fake backend
//! (`SKIFF_BACKEND=fake`). It plays the two processes of a VM with the same
//! sockets and exit codes, and speaks the real agent protocol, so the
//! daemon's lifecycle, restart policies, adoption, pools and API run in
//! seconds without booting anything. It is never used for a real VM.
//!
//! - `skiff-fake-vm vsock --socket PATH`: the vsock backend's part: creates
//!   PATH (what the launcher waits for) and waits to be killed.
//! - `skiff-fake-vm guest --uds PATH --ready PATH --console PATH ...`: the
//!   guest: says hello on the ready socket, answers `CONNECT <port>` on
//!   PATH like vhost-device-vsock, and serves each connection:
//!   * `Exec` of a service: `Started`, then the "service" `exit N` ends the
//!     VM as QEMU's isa-debug-exit would (exit 1 for success, 3 for failure),
//!     and `sleep` runs for ever;
//!   * `Exec` of a command: `echo ARGS` prints them, `exit N` exits with N,
//!     `sleep N` takes N seconds, anything else prints its argv; `Exited`
//!     follows;
//!   * `Shutdown`: the guest powers off (exit 0);
//!   * `CopyOut`: a hostile entry stream under `/hostile/`, else one small
//!     setuid file (see `copy_out`);
//!   * the service `http PORT` answers HTTP on the guest's address from
//!     `skiff.ip=` in `--cmdline` (added to `lo`, so this needs root in a
//!     network namespace of the test's), 200 until the command `unhealthy`
//!     makes it answer 500: the proxy and health checks talk to it as they
//!     would to a real guest's web server.
//!
//! `--console` receives a line per event, as a serial console would.

use skiff_proto::{BootTimes, ExitStatus, Hello, Message, PROTOCOL_VERSION};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The guest's address on its managed network (`skiff.ip=` of the kernel
/// command line the plan gave), if it has one.
static GUEST_IP: OnceLock<std::net::Ipv4Addr> = OnceLock::new();
/// Whether the `http` service answers 500 (after the command `unhealthy`).
static UNHEALTHY: AtomicBool = AtomicBool::new(false);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmdline = args
        .windows(2)
        .find(|w| w[0] == "--cmdline")
        .map(|w| w[1].clone())
        .unwrap_or_default();
    if let Some(ip) = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("skiff.ip="))
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|a| a.parse().ok())
    {
        let _ = GUEST_IP.set(ip);
    }
    let flag = |name: &str| {
        args.windows(2)
            .find(|w| w[0] == name)
            .map(|w| PathBuf::from(&w[1]))
    };
    match args.first().map(String::as_str) {
        Some("vsock") => {
            let Some(socket) = flag("--socket") else {
                usage()
            };
            if std::fs::write(&socket, b"").is_err() {
                eprintln!("skiff-fake-vm: cannot create {}", socket.display());
                exit(1);
            }
            loop {
                std::thread::park();
            }
        }
        Some("guest") => {
            let (Some(uds), Some(ready), Some(console)) =
                (flag("--uds"), flag("--ready"), flag("--console"))
            else {
                usage()
            };
            if let Some(qmp) = flag("--qmp") {
                serve_qmp(&qmp, &console);
            }
            guest(uds, ready, console)
        }
        _ => usage(),
    }
}

/// QEMU's monitor, as much of it as skiff uses: a greeting, `{"return":
/// {}}` to every command, and `system_powerdown` as a guest whose init
/// honours the power button (it says so on the console and powers off).
fn serve_qmp(path: &std::path::Path, console_path: &std::path::Path) {
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skiff-fake-vm: cannot listen on {}: {e}", path.display());
            exit(1)
        }
    };
    let console_path = console_path.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut out = &stream;
            if out.write_all(b"{\"QMP\": {\"version\": {}}}\n").is_err() {
                continue;
            }
            for line in BufReader::new(&stream).lines().map_while(Result::ok) {
                let _ = out.write_all(b"{\"return\": {}}\n");
                if line.contains("system_powerdown") {
                    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&console_path)
                    {
                        let _ = writeln!(f, "[fake guest] power button: powering off");
                    }
                    exit(0);
                }
            }
        }
    });
}

fn usage() -> ! {
    eprintln!("usage: skiff-fake-vm vsock --socket PATH | guest --uds PATH --ready PATH --console PATH [--cmdline TEXT] [--qmp PATH]");
    exit(2)
}

type Console = Arc<Mutex<std::fs::File>>;

fn say(console: &Console, line: &str) {
    let mut f = console.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(f, "[fake guest] {line}");
}

fn guest(uds: PathBuf, ready: PathBuf, console: PathBuf) -> ! {
    let console: Console = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console)
    {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            eprintln!("skiff-fake-vm: cannot open {}: {e}", console.display());
            exit(1)
        }
    };
    say(&console, "booting");
    let listener = match UnixListener::bind(&uds) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skiff-fake-vm: cannot listen on {}: {e}", uds.display());
            exit(1)
        }
    };
    match UnixStream::connect(&ready) {
        Ok(stream) => {
            let console = console.clone();
            std::thread::spawn(move || serve(stream, &console));
        }
        Err(e) => {
            eprintln!("skiff-fake-vm: cannot reach {}: {e}", ready.display());
            exit(1)
        }
    }
    say(&console, "ready");
    for stream in listener.incoming().flatten() {
        let console = console.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() || !line.starts_with("CONNECT ") {
                return;
            }
            let port = line["CONNECT ".len()..].trim().to_owned();
            if (&stream)
                .write_all(format!("OK {port}\n").as_bytes())
                .is_ok()
            {
                serve(stream, &console);
            }
        });
    }
    exit(1)
}

/// One agent connection: hello, then requests until it closes.
fn serve(mut stream: UnixStream, console: &Console) {
    let hello = Message::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: format!("fake {}", env!("CARGO_PKG_VERSION")),
        boot: BootTimes::default(),
        problems: Vec::new(),
    });
    if skiff_proto::write_message(&mut stream, &hello).is_err() {
        return;
    }
    let mut reader = match stream.try_clone() {
        Ok(r) => r,
        Err(_) => return,
    };
    while let Ok(Some(msg)) = skiff_proto::read_message(&mut reader) {
        let replies = match msg {
            Message::Exec(req) if req.service => {
                say(console, &format!("service {:?}", req.argv));
                service(&req.argv, console);
                vec![Message::Started(1)]
            }
            Message::Exec(req) if req.argv == ["zeros"] => {
                // Output without end, like `cat /dev/zero`, until the host
                // stops the command by closing the connection.
                say(console, "exec zeros");
                let chunk = Message::Stdout(vec![0u8; skiff_proto::MAX_CHUNK]);
                while skiff_proto::write_message(&mut stream, &chunk).is_ok() {}
                say(console, "zeros: the host closed the connection");
                return;
            }
            Message::Exec(req) => {
                say(console, &format!("exec {:?}", req.argv));
                command(&req.argv)
            }
            Message::Shutdown => {
                say(console, "power off");
                exit(0)
            }
            Message::CopyOut(path) => copy_out(&path),
            other => vec![Message::Error(format!(
                "the fake guest does not do {}",
                other.name()
            ))],
        };
        for reply in replies {
            if skiff_proto::write_message(&mut stream, &reply).is_err() {
                return;
            }
        }
    }
}

/// A service ends the fake VM the way QEMU's isa-debug-exit ends a real
/// one: `exit 0` → 1 (success), `exit N` → 3 (failure).
fn service(argv: &[String], console: &Console) {
    if let [cmd, port] = argv {
        if cmd == "http" {
            http_service(port, console);
            return;
        }
    }
    if let [cmd, code] = argv {
        if cmd == "exit" {
            let failed = code != "0";
            let console = console.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                say(
                    &console,
                    if failed {
                        "service failed"
                    } else {
                        "service done"
                    },
                );
                exit(if failed { 3 } else { 1 })
            });
        }
    }
}

/// Serve HTTP on the guest's address: a page naming it, or 500 when
/// unhealthy. The address goes on `lo` so that the host reaches it.
fn http_service(port: &str, console: &Console) {
    let (Some(ip), Ok(port)) = (GUEST_IP.get().copied(), port.parse::<u16>()) else {
        say(console, "http: no guest address or port; service failed");
        exit(3)
    };
    // "exists" on a restart is fine.
    let _ = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .stderr(std::process::Stdio::null())
        .status();
    let listener = match std::net::TcpListener::bind((ip, port)) {
        Ok(l) => l,
        Err(e) => {
            say(console, &format!("http: cannot listen on {ip}:{port}: {e}"));
            exit(3)
        }
    };
    say(console, &format!("http: listening on {ip}:{port}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer_http(stream, ip));
        }
    });
}

fn answer_http(mut stream: std::net::TcpStream, ip: std::net::Ipv4Addr) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    // The request line and headers, up to the blank line.
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let (status, body) = if UNHEALTHY.load(Ordering::SeqCst) {
        ("500 Internal Server Error", "unhealthy\n".to_owned())
    } else {
        ("200 OK", format!("fake service on {ip}\n"))
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// What the fake guest sends for `skiff cp VM:PATH ...`: under
/// `/hostile/`, the stream a hostile guest would send (the item asked for,
/// then a `.bashrc` beside it); anything else is a 5-byte file with the
/// setuid bit, which the host must not keep.
fn copy_out(path: &str) -> Vec<Message> {
    use skiff_proto::copy::{item_name, Entry, EntryKind};
    let name = item_name(std::path::Path::new(path));
    let entry = |path: &str, kind, mode, size| {
        Message::Entry(Entry {
            path: path.to_owned(),
            kind,
            mode,
            size,
            target: None,
        })
    };
    if path.starts_with("/hostile/") {
        vec![
            entry(&name, EntryKind::Dir, 0o755, 0),
            entry(".bashrc", EntryKind::File, 0o644, 5),
            Message::Data(b"owned".to_vec()),
            Message::End,
        ]
    } else {
        vec![
            entry(&name, EntryKind::File, 0o4755, 5),
            Message::Data(b"fine\n".to_vec()),
            Message::End,
        ]
    }
}

fn command(argv: &[String]) -> Vec<Message> {
    if argv == ["unhealthy"] {
        UNHEALTHY.store(true, Ordering::SeqCst);
        return vec![Message::Exited(ExitStatus::Code(0))];
    }
    let (out, code) = match argv {
        [cmd, rest @ ..] if cmd == "echo" => (format!("{}\n", rest.join(" ")), 0),
        [cmd, code] if cmd == "exit" => (String::new(), code.parse().unwrap_or(1)),
        [cmd, secs] if cmd == "sleep" => {
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(1)));
            (String::new(), 0)
        }
        _ => (format!("{}\n", argv.join(" ")), 0),
    };
    let mut replies = Vec::new();
    if !out.is_empty() {
        replies.push(Message::Stdout(out.into_bytes()));
    }
    replies.push(Message::Exited(ExitStatus::Code(code)));
    replies
}
