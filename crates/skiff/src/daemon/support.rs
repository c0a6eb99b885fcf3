//! What of a spec this daemon can provide, and the devices it maps to.

use super::manager::ManagerError;
use skiff_spec::VmSpec;

/// Spec features this daemon validates but cannot provide. Refusing them
/// is better than running a VM that silently lacks its network.
pub fn check_supported(spec: &VmSpec) -> Result<(), ManagerError> {
    use skiff_spec::{Egress, NetMode};
    let mut missing = Vec::new();
    let nics = spec
        .network
        .iter()
        .filter(|n| n.mode != NetMode::None)
        .count();
    if nics > 1 {
        missing.push("more than one network interface");
    }
    if spec
        .network
        .iter()
        .any(|n| n.mode == NetMode::User && matches!(n.egress, Egress::Cidrs(_)))
    {
        missing.push(
            "egress limited to CIDRs in user mode (use a managed network: mode = \"bridge\")",
        );
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(ManagerError::InvalidSpec(format!(
        "vm.{}: {} not supported by this version of the daemon; remove them from the spec",
        spec.name,
        missing.join(", ")
    )))
}

/// The user-mode network of a spec, with its port forwards.
pub fn user_net(spec: &VmSpec) -> Option<skiff_vmm::UserNet> {
    if !spec
        .network
        .iter()
        .any(|n| n.mode == skiff_spec::NetMode::User)
    {
        return None;
    }
    let mut net = usernet_with(&spec.forward_ports);
    net.no_egress = spec
        .network
        .iter()
        .any(|n| n.egress == skiff_spec::Egress::None);
    Some(net)
}

/// User-mode networking with these port forwards.
pub fn usernet_with(forwards: &[skiff_spec::PortForward]) -> skiff_vmm::UserNet {
    let forwards = forwards
        .iter()
        .map(|f| skiff_vmm::usernet::Forward {
            proto: match f.protocol {
                skiff_spec::Protocol::Tcp => skiff_vmm::usernet::Proto::Tcp,
                skiff_spec::Protocol::Udp => skiff_vmm::usernet::Proto::Udp,
            },
            host_addr: f.host_address,
            host_port: f.host_port,
            guest_port: f.guest_port,
        })
        .collect();
    skiff_vmm::UserNet {
        forwards,
        no_egress: false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_not_built_yet_are_refused_by_name() {
        let specs = skiff_spec::parse_file(
            "[vm.a]\nnetwork = [{ mode = \"bridge\", network = \"lan\" }, { mode = \"user\", egress = [\"10.0.0.0/8\"] }]\n",
        )
        .expect("valid");
        let err = check_supported(&specs[0]).expect_err("refused").to_string();
        assert!(
            err.contains("more than one network interface, egress limited to CIDRs in user mode"),
            "{err}"
        );
        let bridge = skiff_spec::parse_file(
            "[vm.a]\nnetwork = [{ mode = \"bridge\", network = \"lan\", egress = [\"10.0.0.0/8\"] }]\n",
        )
        .expect("valid");
        assert!(check_supported(&bridge[0]).is_ok());
        let user = skiff_spec::parse_file(
            "[vm.a]\nnetwork = [{ mode = \"user\", egress = \"none\" }]\nforward_ports = [\"8080:80\"]\n",
        )
        .expect("valid");
        assert!(check_supported(&user[0]).is_ok());
        let net = user_net(&user[0]).expect("net");
        assert_eq!(net.forwards.len(), 1);
        assert!(net.no_egress);
        assert!(check_supported(&VmSpec::with_defaults("b")).is_ok());
    }
}
