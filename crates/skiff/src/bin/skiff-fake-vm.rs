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
//!   * `Shutdown`: the guest powers off (exit 0).
//!
//! `--console` receives a line per event, as a serial console would.

use skiff_proto::{BootTimes, ExitStatus, Hello, Message, PROTOCOL_VERSION};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::exit;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
            guest(uds, ready, console)
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: skiff-fake-vm vsock --socket PATH | guest --uds PATH --ready PATH --console PATH [--cmdline TEXT]");
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
            Message::Exec(req) => {
                say(console, &format!("exec {:?}", req.argv));
                command(&req.argv)
            }
            Message::Shutdown => {
                say(console, "power off");
                exit(0)
            }
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

fn command(argv: &[String]) -> Vec<Message> {
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
