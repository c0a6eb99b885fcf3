//! Facts of the daemon's host that its VMs' plans depend on.

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
