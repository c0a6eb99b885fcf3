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

/// `SKIFF_QEMU_USER` (or the default, `nobody`) names no user here.
#[derive(Debug, thiserror::Error)]
#[error("QEMU would run as root: the user {0:?} it drops to does not exist on this host; create it, name another with SKIFF_QEMU_USER=USER, or set SKIFF_QEMU_USER= (empty) to run QEMU as root on purpose")]
pub struct UnknownQemuUser(pub String);

/// The user QEMU drops to once it has opened its devices, when the daemon
/// runs as root: `$SKIFF_QEMU_USER` (empty: stay root, on purpose), else
/// `nobody`. A user that does not exist is an error, never a silent root.
pub fn qemu_user() -> Result<Option<String>, UnknownQemuUser> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    qemu_user_named(std::env::var("SKIFF_QEMU_USER").ok().as_deref(), |name| {
        nix::unistd::User::from_name(name).ok().flatten().is_some()
    })
}

fn qemu_user_named(
    setting: Option<&str>,
    exists: impl Fn(&str) -> bool,
) -> Result<Option<String>, UnknownQemuUser> {
    match setting.unwrap_or("nobody") {
        "" => Ok(None),
        name if exists(name) => Ok(Some(name.to_owned())),
        name => Err(UnknownQemuUser(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::qemu_user_named;

    #[test]
    fn an_unknown_qemu_user_is_an_error_not_root() {
        let exists = |n: &str| n == "nobody" || n == "kvm";
        assert_eq!(
            qemu_user_named(None, exists).ok(),
            Some(Some("nobody".into()))
        );
        assert_eq!(
            qemu_user_named(Some("kvm"), exists).ok(),
            Some(Some("kvm".into()))
        );
        assert_eq!(
            qemu_user_named(Some(""), exists).ok(),
            Some(None),
            "empty: root on purpose"
        );
        let err = qemu_user_named(Some("qemu-typo"), exists).expect_err("unknown");
        assert!(
            err.to_string()
                .contains("\"qemu-typo\" it drops to does not exist"),
            "{err}"
        );
        assert!(
            qemu_user_named(None, |_| false).is_err(),
            "no nobody: an error too"
        );
    }
}
