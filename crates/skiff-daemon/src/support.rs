//! Small things the daemon's modules share: facts of the host that VMs'
//! plans depend on, and errors on one line.

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The user QEMU drops to once it has opened its devices, when the daemon
/// runs as root: `$SKIFF_QEMU_USER` (empty: stay root), else `nobody`.
pub fn qemu_user() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let name = std::env::var("SKIFF_QEMU_USER").unwrap_or_else(|_| "nobody".into());
    if name.is_empty() {
        return None;
    }
    nix::unistd::User::from_name(&name)
        .ok()
        .flatten()
        .map(|u| u.name)
}
