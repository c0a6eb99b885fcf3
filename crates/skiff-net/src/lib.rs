//! Managed networks for skiff VMs: a Linux bridge per network with the
//! gateway address on it, a persistent TAP per VM interface, and an
//! nftables table per network for NAT, isolation and egress limits.
//!
//! Planning is pure (subnets and leases in [`subnet`], rule sets in
//! [`nft`]); [`link`] and [`nft::apply`] are the effects. Everything this
//! crate creates carries a skiff prefix (`skb-`, `skt-`, `skiff-`) so that
//! leftovers of a crashed run can be found and removed.

pub mod link;
#[cfg(test)]
mod netns_test;
pub mod nft;
pub mod subnet;

pub use subnet::Subnet;

use std::net::Ipv4Addr;

/// Prefix of the bridges skiff creates.
pub const BRIDGE_PREFIX: &str = "skb-";
/// Prefix of the TAP devices skiff creates.
pub const TAP_PREFIX: &str = "skt-";
/// Longest network name: a Linux interface name has at most 15 bytes.
pub const MAX_NAME_LEN: usize = 15 - BRIDGE_PREFIX.len();

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid subnet {input:?}: {why}")]
    BadSubnet { input: String, why: String },
    #[error("invalid network name {name:?}: {why}")]
    BadName { name: String, why: String },
    #[error("{address} is not in {subnet}; choose an address inside the network's subnet")]
    AddressOutside { address: Ipv4Addr, subnet: Subnet },
    #[error(
        "{address} is reserved in {subnet} (network, gateway or broadcast address); choose another"
    )]
    AddressReserved { address: Ipv4Addr, subnet: Subnet },
    #[error("no free address in {subnet}: all {leased} are leased; remove VMs from the network or create a larger one")]
    PoolExhausted { subnet: Subnet, leased: usize },
    #[error("{what} needs the CAP_NET_ADMIN capability; run the daemon as root (or give it CAP_NET_ADMIN, e.g. AmbientCapabilities=CAP_NET_ADMIN in its systemd unit)")]
    Permission { what: String },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft failed to {what}: {stderr}")]
    Nft { what: String, stderr: String },
}

/// Check a network name: what becomes part of interface and table names.
pub fn check_network_name(name: &str) -> Result<(), NetError> {
    let bad = |why: &str| NetError::BadName {
        name: name.to_owned(),
        why: why.to_owned(),
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad(&format!("use 1 to {MAX_NAME_LEN} characters")));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
    {
        return Err(bad(
            "use lower-case letters, digits and '-' (not first), like \"lan\" or \"web-1\"",
        ));
    }
    Ok(())
}

/// The bridge of a network.
pub fn bridge_name(network: &str) -> String {
    format!("{BRIDGE_PREFIX}{network}")
}

/// The TAP of a VM's interface, from the VM's id (stable across reboots).
pub fn tap_name(vm_id: &str) -> String {
    let id: String = vm_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(15 - TAP_PREFIX.len())
        .collect();
    format!("{TAP_PREFIX}{id}")
}

/// Whether this process may change the network configuration.
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// `Err(Permission)` unless this process has CAP_NET_ADMIN.
pub fn require_net_admin(what: &str) -> Result<(), NetError> {
    if has_net_admin() {
        Ok(())
    } else {
        Err(NetError::Permission {
            what: what.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_interface_names() {
        assert!(check_network_name("lan").is_ok());
        assert!(check_network_name("abcdefghijk").is_ok());
        for bad in ["", "abcdefghijkl", "Lan", "a_b", "-a", "a b", "a/b"] {
            assert!(check_network_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(bridge_name("abcdefghijk").len(), 15);
        assert_eq!(tap_name("0123456789abcdef"), "skt-0123456789a");
        assert_eq!(tap_name("ab-cd"), "skt-abcd");
    }
}
