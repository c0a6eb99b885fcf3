//! The nftables rules of a network, built as text and applied in one
//! `nft -f -` transaction, so a network's rules change atomically.
//!
//! Per network there is an `ip` table (NAT for egress, isolation from other
//! skiff networks, per-VM egress limits, no new connections from outside
//! to VM addresses) and a `bridge` table. The bridge table binds each VM's
//! TAP to the VM's MAC and address before anything else sees a frame: a
//! frame from a TAP must carry the VM's MAC as its source, an IPv4 packet
//! its leased address, an ARP message both as its sender; anything else
//! (IPv6 included, which skiff does not route or filter) is dropped. So
//! the `ip saddr` rules below can trust the address: a guest cannot take a
//! neighbour's address or a new one to get around its egress limit. A VM
//! without egress cannot reach its peers on the bridge either. Both tables
//! are named `skiff-NAME`.

use crate::{NetError, Subnet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Prefix of the tables skiff creates.
pub const TABLE_PREFIX: &str = "skiff-";

/// What a VM on the network may reach beyond its own network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    All,
    /// Nothing: no forwarding, no new connections to the host, no peers.
    None,
    /// Only these CIDRs (plus answers to connections made to the VM).
    Only(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRule {
    pub address: Ipv4Addr,
    pub egress: Egress,
    /// The VM's TAP and MAC, when the VM exists: what its frames must come
    /// from. (A lease without a VM has no TAP.)
    pub port: Option<VmPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPort {
    pub tap: String,
    pub mac: String,
}

/// The bridge rules that hold each TAP to its VM's MAC and address.
///
/// What a TAP may send is accepted and the rest of it dropped per TAP:
/// every network's bridge table sees every bridged frame (an accept in
/// one table does not end another's chain), so a catch-all here would
/// drop the frames of other networks' VMs.
fn port_guard(vms: &[VmRule]) -> Vec<String> {
    let mut rules = Vec::new();
    for vm in vms {
        let Some(VmPort { tap, mac }) = &vm.port else {
            continue;
        };
        let a = vm.address;
        rules.push(format!(
            "iifname \"{tap}\" ether saddr {mac} ether type ip ip saddr {a} accept"
        ));
        // 0.0.0.0 as sender: an address probe (RFC 5227), harmless.
        rules.push(format!(
            "iifname \"{tap}\" ether saddr {mac} ether type arp arp saddr ether {mac} arp saddr ip {{ {a}, 0.0.0.0 }} accept"
        ));
        rules.push(format!("iifname \"{tap}\" drop"));
    }
    rules
}

/// Everything the rules of one network depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRules {
    pub name: String,
    pub subnet: Subnet,
    pub vms: Vec<VmRule>,
}

pub fn table_name(network: &str) -> String {
    format!("{TABLE_PREFIX}{network}")
}

/// The script that replaces (or creates) both tables of a network.
pub fn ruleset(n: &NetworkRules) -> String {
    let table = table_name(&n.name);
    let br = crate::bridge_name(&n.name);
    let others = format!("{}*", crate::BRIDGE_PREFIX);
    let mut forward = vec![
        // Other skiff networks are out of reach, both ways.
        format!("iifname \"{br}\" oifname \"{others}\" oifname != \"{br}\" drop"),
        format!("oifname \"{br}\" iifname \"{others}\" iifname != \"{br}\" drop"),
    ];
    let mut input = Vec::new();
    let mut bridge = Vec::new();
    for vm in &n.vms {
        let a = vm.address;
        match &vm.egress {
            Egress::All => {}
            Egress::None => {
                forward.push(format!("iifname \"{br}\" ip saddr {a} drop"));
                input.push(format!(
                    "iifname \"{br}\" ip saddr {a} ct state established,related accept"
                ));
                input.push(format!("iifname \"{br}\" ip saddr {a} drop"));
                bridge.push(format!("ip saddr {a} drop"));
            }
            Egress::Only(cidrs) => {
                // The VM's own network stays reachable: it is one L2
                // segment, and with br_netfilter loaded bridged packets
                // would meet this rule too.
                let mut allowed = vec![n.subnet.to_string()];
                allowed.extend(cidrs.iter().cloned());
                forward.push(format!(
                    "iifname \"{br}\" ip saddr {a} ip daddr != {{ {} }} drop",
                    allowed.join(", ")
                ));
            }
        }
    }
    // Answers to what VMs started pass; nothing else from outside reaches a
    // VM's address (port forwards go through the host).
    forward.push(format!(
        "oifname \"{br}\" ct state established,related accept"
    ));
    forward.push(format!("oifname \"{br}\" iifname != \"{br}\" drop"));
    let chain = |name: &str, hook: &str, rules: &[String]| {
        let mut s = format!("  chain {name} {{\n    {hook}\n");
        for r in rules {
            s.push_str(&format!("    {r}\n"));
        }
        s.push_str("  }\n");
        s
    };
    let mut out = String::new();
    // Declaring a table first makes the delete valid when it does not exist.
    out.push_str(&format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n"
    ));
    out.push_str(&chain(
        "filter_forward",
        "type filter hook forward priority filter; policy accept;",
        &forward,
    ));
    out.push_str(&chain(
        "filter_input",
        "type filter hook input priority filter; policy accept;",
        &input,
    ));
    out.push_str(&chain(
        "nat_postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
        &[format!(
            "ip saddr {} oifname != \"{br}\" masquerade",
            n.subnet
        )],
    ));
    out.push_str("}\n");
    out.push_str(&format!(
        "table bridge {table} {{}}\ndelete table bridge {table}\ntable bridge {table} {{\n"
    ));
    out.push_str(&chain(
        "guard_ports",
        "type filter hook prerouting priority filter; policy accept;",
        &port_guard(&n.vms),
    ));
    out.push_str(&chain(
        "filter_forward",
        "type filter hook forward priority filter; policy accept;",
        &bridge,
    ));
    out.push_str("}\n");
    out
}

/// The script that removes a network's tables (whether or not they exist).
pub fn removal(network: &str) -> String {
    let table = table_name(network);
    format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable bridge {table} {{}}\ndelete table bridge {table}\n"
    )
}

/// Run an nft script as one transaction.
pub fn apply(script: &str, what: &str) -> Result<(), NetError> {
    let io = |source| NetError::Io {
        what: "cannot run nft (install the nftables package)".into(),
        source,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.contains("Operation not permitted") {
        return Err(NetError::Permission {
            what: what.to_owned(),
        });
    }
    Err(NetError::Nft {
        what: what.to_owned(),
        stderr,
    })
}

/// The networks that have skiff tables in the kernel.
pub fn networks_with_tables() -> Result<Vec<String>, NetError> {
    let out = Command::new("nft")
        .args(["-j", "list", "tables"])
        .output()
        .map_err(|source| NetError::Io {
            what: "cannot run nft (install the nftables package)".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetError::Nft {
            what: "list tables".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(tables_in(&String::from_utf8_lossy(&out.stdout)))
}

/// Network names from `nft -j list tables` output.
fn tables_in(json: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut names: Vec<String> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["table"]["name"].as_str())
        .filter_map(|n| n.strip_prefix(TABLE_PREFIX))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(vms: Vec<VmRule>) -> String {
        ruleset(&NetworkRules {
            name: "lan".into(),
            subnet: "10.88.0.0/24".parse().expect("subnet"),
            vms,
        })
    }

    #[test]
    fn a_network_masquerades_and_is_isolated_from_other_networks() {
        let r = rules(Vec::new());
        assert!(r.starts_with(
            "table ip skiff-lan {}\ndelete table ip skiff-lan\ntable ip skiff-lan {\n"
        ));
        assert!(r.contains("ip saddr 10.88.0.0/24 oifname != \"skb-lan\" masquerade"));
        assert!(r.contains("iifname \"skb-lan\" oifname \"skb-*\" oifname != \"skb-lan\" drop"));
        assert!(r.contains("oifname \"skb-lan\" iifname \"skb-*\" iifname != \"skb-lan\" drop"));
        // Answers pass before new inbound connections are dropped.
        let answers = r.find("oifname \"skb-lan\" ct state established,related accept");
        let inbound = r.find("oifname \"skb-lan\" iifname != \"skb-lan\" drop");
        assert!(answers.expect("answers") < inbound.expect("inbound"));
        assert_eq!(r.matches("ip saddr").count(), 1, "no per-VM rules: {r}");
    }

    #[test]
    fn the_kernel_accepts_the_rules_and_removal_leaves_nothing() {
        // In a fresh network namespace on a thread of its own: nft runs in
        // the namespace of the thread that starts it.
        crate::netns_test::in_new_netns(
            "the_kernel_accepts_the_rules_and_removal_leaves_nothing",
            || {
                let script = rules(vec![
                    VmRule {
                        address: "10.88.0.3".parse().expect("ip"),
                        egress: Egress::None,
                        port: Some(VmPort {
                            tap: "skt-0123".into(),
                            mac: "52:54:00:12:34:56".into(),
                        }),
                    },
                    VmRule {
                        address: "10.88.0.4".parse().expect("ip"),
                        egress: Egress::Only(vec!["10.0.0.0/8".into()]),
                        port: None,
                    },
                ]);
                apply(&script, "create").expect("nft accepts the rules");
                apply(&script, "replace").expect("and accepts them again (replace)");
                assert_eq!(networks_with_tables().expect("list"), ["lan"]);
                apply(&removal("lan"), "remove").expect("removal");
                apply(&removal("lan"), "remove").expect("removal of nothing");
                assert!(networks_with_tables().expect("list").is_empty());
            },
        );
    }

    #[test]
    fn egress_limits_become_per_address_rules() {
        let r = rules(vec![
            VmRule {
                address: "10.88.0.2".parse().expect("ip"),
                egress: Egress::All,
                port: None,
            },
            VmRule {
                address: "10.88.0.3".parse().expect("ip"),
                egress: Egress::None,
                port: None,
            },
            VmRule {
                address: "10.88.0.4".parse().expect("ip"),
                egress: Egress::Only(vec!["10.0.0.0/8".into(), "192.0.2.7/32".into()]),
                port: None,
            },
        ]);
        assert!(!r.contains("10.88.0.2"));
        assert!(r.contains("iifname \"skb-lan\" ip saddr 10.88.0.3 drop"));
        assert!(r.contains(
            "iifname \"skb-lan\" ip saddr 10.88.0.3 ct state established,related accept"
        ));
        assert!(r.contains("  chain filter_forward {\n    type filter hook forward priority filter; policy accept;\n    ip saddr 10.88.0.3 drop\n"));
        assert!(r.contains(
            "iifname \"skb-lan\" ip saddr 10.88.0.4 ip daddr != { 10.88.0.0/24, 10.0.0.0/8, 192.0.2.7/32 } drop"
        ));
        assert!(removal("lan").contains("delete table bridge skiff-lan"));
    }

    #[test]
    fn each_tap_is_bound_to_its_mac_and_address() {
        let r = rules(vec![VmRule {
            address: "10.88.0.5".parse().expect("ip"),
            egress: Egress::All,
            port: Some(VmPort {
                tap: "skt-abc".into(),
                mac: "52:54:aa:bb:cc:dd".into(),
            }),
        }]);
        let guard = "  chain guard_ports {\n    type filter hook prerouting priority filter; policy accept;\n    iifname \"skt-abc\" ether saddr 52:54:aa:bb:cc:dd ether type ip ip saddr 10.88.0.5 accept\n    iifname \"skt-abc\" ether saddr 52:54:aa:bb:cc:dd ether type arp arp saddr ether 52:54:aa:bb:cc:dd arp saddr ip { 10.88.0.5, 0.0.0.0 } accept\n    iifname \"skt-abc\" drop\n  }\n";
        assert!(r.contains(guard), "{r}");
        // Never a catch-all: other networks' frames cross this table too.
        assert!(!rules(Vec::new()).contains("skt-"));
    }

    #[test]
    fn listed_tables_are_read_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "skiff-lan", "handle": 1}},
            {"table": {"family": "bridge", "name": "skiff-lan", "handle": 2}},
            {"table": {"family": "inet", "name": "filter", "handle": 3}},
            {"table": {"family": "ip", "name": "skiff-web", "handle": 4}}]}"#;
        assert_eq!(tables_in(json), ["lan", "web"]);
        assert!(tables_in("not json").is_empty());
    }
}
