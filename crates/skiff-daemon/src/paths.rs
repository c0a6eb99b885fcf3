//! Where skiff keeps things and finds its helpers.

use std::env;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where something cannot be placed or found.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("cannot choose a {0} directory: set SKIFF_{1}_DIR or HOME")]
    NoHome(&'static str, &'static str),
    #[error("{} is owned by uid {owner}, not by this user (uid {me}): another local user may have made it to read skiff's files or catch its sockets; remove it, or set {var} to a directory of yours", path.display())]
    NotOurs {
        path: PathBuf,
        owner: u32,
        me: u32,
        var: &'static str,
    },
    #[error("{} is open to every user (mode {mode:o}); skiff keeps its files in a directory of its own: set {var} to a directory inside it", path.display())]
    Shared {
        path: PathBuf,
        mode: u32,
        var: &'static str,
    },
    #[error("{} is not a directory; remove it or set {var} elsewhere", path.display())]
    NotADirectory { path: PathBuf, var: &'static str },
    #[error("cannot create or restrict {}", path.display())]
    Private {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no static guest agent (skiff-agent) was found; build it with scripts/build-agent.sh or set SKIFF_AGENT to its path (looked in: {})", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoAgent { looked: Vec<PathBuf> },
}

fn home() -> Option<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The cache of kernels and images: `$SKIFF_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/skiff`, else `~/.cache/skiff`.
pub fn cache_dir() -> Result<PathBuf, PathError> {
    if let Some(d) = env::var_os("SKIFF_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("skiff"));
    }
    match home() {
        Some(h) => Ok(h.join(".cache/skiff")),
        None => Err(PathError::NoHome("cache", "CACHE")),
    }
}

/// Runtime files (sockets) of running VMs: `$SKIFF_RUNTIME_DIR`, else
/// `/run/skiff` for root, `$XDG_RUNTIME_DIR/skiff`, or `/tmp/skiff-<uid>`.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = env::var_os("SKIFF_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        return PathBuf::from("/run/skiff");
    }
    if let Some(d) = env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("skiff");
    }
    PathBuf::from(format!("/tmp/skiff-{uid}"))
}

/// The daemon's API socket: `$SKIFF_SOCKET`, else `/run/skiff/skiff.sock`
/// for root, else `skiff.sock` in the user's runtime directory.
pub fn socket_path() -> PathBuf {
    if let Some(p) = env::var_os("SKIFF_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    runtime_dir().join("skiff.sock")
}

/// The system daemon's socket (skiff.socket, the Debian package).
pub const SYSTEM_SOCKET: &str = "/run/skiff/skiff.sock";

/// The socket the CLI talks to: the daemon's ([`socket_path`]), except
/// that a member of the `skiff` group without `$SKIFF_SOCKET` uses the
/// system daemon when it is installed (its socket is there, or /run/skiff
/// cannot be looked into: then connecting says why), rather than a
/// private one.
pub fn client_socket_path() -> PathBuf {
    let explicit = env::var_os("SKIFF_SOCKET").is_some_and(|p| !p.is_empty());
    let member = || {
        let Ok(Some(group)) = nix::unistd::Group::from_name("skiff") else {
            return false;
        };
        nix::unistd::getgroups().is_ok_and(|gs| gs.contains(&group.gid))
            || nix::unistd::getegid() == group.gid
    };
    let system = Path::new(SYSTEM_SOCKET);
    let installed = || match std::fs::symlink_metadata(system) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    };
    if !explicit && !nix::unistd::getuid().is_root() && member() && installed() {
        return system.to_owned();
    }
    socket_path()
}

/// The daemon's persistent state (database, VM directories):
/// `$SKIFF_STATE_DIR`, else `/var/lib/skiff` for root, else
/// `$XDG_DATA_HOME/skiff` or `~/.local/share/skiff`.
pub fn state_dir() -> Result<PathBuf, PathError> {
    if let Some(d) = env::var_os("SKIFF_STATE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if nix::unistd::getuid().is_root() {
        return Ok(PathBuf::from("/var/lib/skiff"));
    }
    if let Some(d) = env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("skiff"));
    }
    match home() {
        Some(h) => Ok(h.join(".local/share/skiff")),
        None => Err(PathError::NoHome("state", "STATE")),
    }
}

/// Make `dir` (and missing parents) a directory only its owner can use,
/// and refuse one another user owns (the directory itself, and the link
/// when it is a symlink: a stranger's link to a directory of ours is
/// refused too). `traverse_group` lets that group reach named entries
/// inside (mode 0710; the API socket's directory when the socket is
/// shared with a group); otherwise the mode is 0700.
///
/// Only a directory skiff made, or one of its own name (`skiff...`), is
/// narrowed when it exists wider: a setting that names `/run` or `$HOME`
/// must not change those. A directory open to everyone (sticky and world-
/// writable, like `/tmp`) is refused. `var` names the setting that moves
/// the directory, for the error message.
pub fn private_dir(
    dir: &Path,
    traverse_group: Option<nix::unistd::Gid>,
    var: &'static str,
) -> Result<(), PathError> {
    let private = |source| PathError::Private {
        path: dir.to_owned(),
        source,
    };
    let made = !dir.exists() && std::fs::symlink_metadata(dir).is_err();
    if made {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(private)?;
    }
    let me = nix::unistd::geteuid().as_raw();
    let not_ours = |owner| PathError::NotOurs {
        path: dir.to_owned(),
        owner,
        me,
        var,
    };
    let link = std::fs::symlink_metadata(dir).map_err(private)?;
    if link.file_type().is_symlink() && link.uid() != me && link.uid() != 0 {
        return Err(not_ours(link.uid()));
    }
    let meta = std::fs::metadata(dir).map_err(private)?;
    if !meta.is_dir() {
        return Err(PathError::NotADirectory {
            path: dir.to_owned(),
            var,
        });
    }
    if meta.uid() != me {
        return Err(not_ours(meta.uid()));
    }
    let mode_now = meta.permissions().mode() & 0o7777;
    if mode_now & 0o1002 == 0o1002 {
        return Err(PathError::Shared {
            path: dir.to_owned(),
            mode: mode_now,
            var,
        });
    }
    let ours = made
        || dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("skiff"));
    if !ours {
        return Ok(());
    }
    let mode = match traverse_group {
        Some(gid) => {
            nix::unistd::chown(dir, None, Some(gid)).map_err(|e| private(e.into()))?;
            0o710
        }
        None => 0o700,
    };
    if mode_now != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(private)?;
    }
    Ok(())
}

/// A short random identifier for a VM (12 hex digits).
pub fn new_vm_id() -> String {
    let mut bytes = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    if bytes == [0u8; 6] {
        // No /dev/urandom: fall back on time and pid, unique enough per host.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mixed = nanos ^ (u128::from(std::process::id()) << 64);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Find `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The vhost-user vsock backend: `$SKIFF_VSOCK_BACKEND`, `PATH`, or where
/// `cargo install` puts it.
pub fn vsock_backend() -> PathBuf {
    helper("vhost-device-vsock", "SKIFF_VSOCK_BACKEND")
}

/// Where skiff's own files are installed: by hand (docs/daemon.md), or by
/// the Debian package, which also carries the helpers.
const LIB_DIRS: [&str; 2] = ["/usr/local/lib/skiff", "/usr/lib/skiff"];

/// A helper program: `$ENV_VAR`, `PATH`, skiff's lib directories, or
/// where `cargo install` puts it.
pub fn helper(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = env::var_os(env_var).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = which(name) {
        return p;
    }
    if let Some(p) = LIB_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
    {
        return p;
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".cargo")));
    if let Some(p) = cargo_home
        .map(|c| c.join("bin").join(name))
        .filter(|p| is_executable(p))
    {
        return p;
    }
    PathBuf::from(name) // spawning it reports the "not installed" error
}

/// The static guest agent: `$SKIFF_AGENT`, next to this executable, in the
/// Cargo target directory this executable was built in, or installed under
/// `/usr/local/lib/skiff`.
pub fn agent_binary() -> Result<PathBuf, PathError> {
    if let Some(p) = env::var_os("SKIFF_AGENT").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("skiff-agent"));
            // target/{debug,release}/skiff -> target/x86_64-unknown-linux-gnu/release/skiff-agent
            // target/debug/deps/<test>     -> the same, one level further up
            for up in [dir.parent(), dir.parent().and_then(Path::parent)]
                .into_iter()
                .flatten()
            {
                candidates.push(up.join("x86_64-unknown-linux-gnu/release/skiff-agent"));
            }
        }
    }
    candidates.extend(LIB_DIRS.iter().map(|d| Path::new(d).join("skiff-agent")));
    // A host (dynamically linked) build of the agent can sit next to skiff
    // after `cargo build --workspace`; only a static one can run as /init.
    let usable = |p: &PathBuf| {
        std::fs::read(p)
            .ok()
            .and_then(|b| skiff_image::is_static(&b))
            == Some(true)
    };
    match candidates.iter().find(|p| usable(p)) {
        Some(p) => Ok(p.clone()),
        None => Err(PathError::NoAgent { looked: candidates }),
    }
}

/// A static busybox for the guest: `$SKIFF_BUSYBOX` or `/bin/busybox`
/// (Debian's busybox-static package).
pub fn busybox() -> Option<PathBuf> {
    if let Some(p) = env::var_os("SKIFF_BUSYBOX").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Where one daemon keeps its state and its VMs' runtime files.
pub struct DaemonPaths {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl DaemonPaths {
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("vms").join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::{private_dir, PathError};
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).expect("meta").permissions().mode() & 0o7777
    }

    #[test]
    fn private_dirs_are_made_narrowed_and_refused_when_another_owns_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fresh = tmp.path().join("a/b");
        private_dir(&fresh, None, "SKIFF_STATE_DIR").expect("create");
        assert_eq!(mode(&fresh), 0o700);
        let wide = tmp.path().join("skiff-wide");
        std::fs::create_dir(&wide).expect("mkdir");
        std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        private_dir(&wide, None, "SKIFF_STATE_DIR").expect("narrow");
        assert_eq!(
            mode(&wide),
            0o700,
            "an existing wide skiff directory is narrowed"
        );
        // A directory that is not skiff's keeps its mode (a setting may
        // name $HOME or /run), and one open to all is refused.
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).expect("mkdir");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&home, None, "SKIFF_STATE_DIR").expect("used as it is");
        assert_eq!(mode(&home), 0o755);
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let err = private_dir(&shared, None, "SKIFF_RUNTIME_DIR").expect_err("like /tmp");
        assert!(
            err.to_string().contains("open to every user (mode 1777)"),
            "{err}"
        );
        assert_eq!(mode(&shared), 0o1777, "left alone");
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").expect("write");
        let err = private_dir(&file, None, "SKIFF_RUNTIME_DIR").expect_err("a file");
        assert!(matches!(err, PathError::NotADirectory { .. }), "{err}");

        // A directory squatted by another user (needs root to make one).
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let squatted = tmp.path().join("squat");
        std::fs::create_dir(&squatted).expect("mkdir");
        let before = mode(&squatted);
        nix::unistd::chown(&squatted, Some(nix::unistd::Uid::from_raw(65534)), None)
            .expect("chown");
        let err = private_dir(&squatted, None, "SKIFF_RUNTIME_DIR").expect_err("squatted");
        let text = err.to_string();
        assert!(
            text.contains("is owned by uid 65534, not by this user (uid 0)"),
            "{text}"
        );
        assert!(text.contains("set SKIFF_RUNTIME_DIR"), "{text}");
        assert_eq!(
            mode(&squatted),
            before,
            "another user's directory is left alone"
        );
    }
}
