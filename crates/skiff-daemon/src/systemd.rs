//! The two parts of systemd's protocol the daemon speaks: socket
//! activation (the API socket handed over as fd 3, `LISTEN_PID` and
//! `LISTEN_FDS`, as skiff.socket does) and readiness (`READY=1` and
//! `STOPPING=1` sent to `$NOTIFY_SOCKET`, for `Type=notify`). Both are
//! plain environment and socket conventions (sd_listen_fds(3),
//! sd_notify(3)); no library is needed.

use std::os::fd::{FromRawFd, RawFd};

/// The first descriptor systemd passes.
const LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a number of descriptors")]
    BadCount(String),
    #[error("the descriptor systemd passed (fd 3) is not a Unix stream socket; check ListenStream= in skiff.socket")]
    NotAUnixSocket,
    #[error("cannot keep the socket systemd passed from the daemon's children")]
    Cloexec(#[source] nix::errno::Errno),
}

/// Whether this process was socket-activated: `LISTEN_PID` names it.
fn activated_here(listen_pid: Option<&str>) -> bool {
    listen_pid.and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id())
}

/// The API socket systemd passed, if it started us through a socket unit.
pub fn activated_listener() -> Result<Option<std::os::unix::net::UnixListener>, ActivationError> {
    if !activated_here(std::env::var("LISTEN_PID").ok().as_deref()) {
        return Ok(None);
    }
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    let n: u32 = count
        .parse()
        .map_err(|_| ActivationError::BadCount(count.clone()))?;
    if n == 0 {
        return Ok(None);
    }
    let is_unix_stream =
        nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(LISTEN_FDS_START).is_ok()
            && nix::sys::socket::getsockopt(
                // SAFETY: fd 3 is open (systemd passed it, LISTEN_FDS says so)
                // and only borrowed for this call.
                &unsafe { std::os::fd::BorrowedFd::borrow_raw(LISTEN_FDS_START) },
                nix::sys::socket::sockopt::SockType,
            )
            .is_ok_and(|t| t == nix::sys::socket::SockType::Stream);
    if !is_unix_stream {
        return Err(ActivationError::NotAUnixSocket);
    }
    // SAFETY: fd 3 is a listening Unix stream socket systemd handed to this
    // process (checked above); nothing else in the daemon owns it, and the
    // listener made here becomes its only owner.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTEN_FDS_START) };
    // systemd passes it without close-on-exec, and the variables say to
    // whoever reads them that the socket is theirs: QEMU (run as another
    // user) and every helper would inherit the API, which is root here.
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&listener),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(ActivationError::Cloexec)?;
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Read once, above, before any other thread of the daemon looks at
        // the environment.
        std::env::remove_var(var);
    }
    Ok(Some(listener))
}

/// Where systemd wants to hear from the daemon: `$NOTIFY_SOCKET`, taken
/// out of the environment the first time (the VMs' processes are not to
/// speak for the daemon).
fn notify_socket() -> Option<&'static std::ffi::OsStr> {
    static SOCKET: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();
    SOCKET
        .get_or_init(|| {
            let v = std::env::var_os("NOTIFY_SOCKET");
            std::env::remove_var("NOTIFY_SOCKET");
            v
        })
        .as_deref()
}

/// Take `$NOTIFY_SOCKET` now, at start, before the daemon spawns anything.
pub fn take_notify_socket() {
    let _ = notify_socket();
}

/// Tell systemd (if it asked, through `$NOTIFY_SOCKET`) how the daemon is:
/// `READY=1`, `STOPPING=1`. Failures are logged, never fatal.
pub fn notify(state: &str) {
    let Some(target) = notify_socket() else {
        return;
    };
    if let Err(e) = notify_to(target, state) {
        tracing::warn!(error = %e, "cannot notify systemd ({state})");
    }
}

/// Send `state` to the notify socket `target` (a path, or `@name` for an
/// abstract one).
fn notify_to(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = target.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(state.as_bytes(), target)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_process_takes_the_sockets() {
        let me = std::process::id().to_string();
        assert!(activated_here(Some(&me)));
        assert!(!activated_here(Some("1")));
        assert!(!activated_here(Some("x")));
        assert!(!activated_here(None));
    }

    #[test]
    fn readiness_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        notify_to(path.as_os_str(), "READY=1").expect("sent");
        let mut buf = [0u8; 64];
        listener
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let n = listener.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
