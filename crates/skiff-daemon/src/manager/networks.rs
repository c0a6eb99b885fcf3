//! Managed networks: creating, removing and pruning them, and the wiring of
//! a VM's interface (lease, TAP on the bridge, nftables rules) when it is
//! created, booted and removed. (The HTTP side is in the http module.)

use crate::hostops::HostError;
use crate::manager::{Conflict, Invalid, Manager, ManagerError, Missing};
use crate::netstore::{LeaseError, NetworkRecord};
use crate::store::VmRecord;
use skiff_api::PruneReport;
use skiff_net::nft::{self, Egress, NetworkRules, VmPort, VmRule};
use skiff_net::{NetError, Subnet};
use skiff_spec::{NetMode, VmSpec};
use std::net::Ipv4Addr;

impl From<NetError> for ManagerError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Permission { .. } => ManagerError::Forbidden(e),
            NetError::BadSubnet { .. }
            | NetError::BadName { .. }
            | NetError::AddressOutside { .. }
            | NetError::AddressReserved { .. } => Invalid::Network(e).into(),
            NetError::PoolExhausted { .. } => Conflict::Network(e).into(),
            other => ManagerError::internal("set up the network", other),
        }
    }
}

impl From<HostError> for ManagerError {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Net(n) => n.into(),
            other => ManagerError::internal("change the host", other),
        }
    }
}

impl From<LeaseError> for ManagerError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::NoNetwork(n) => Invalid::NoNetwork(n).into(),
            LeaseError::Taken { .. } => Conflict::Address(e).into(),
            LeaseError::Net(n) => n.into(),
            LeaseError::Store(s) => s.into(),
        }
    }
}

/// Why a VM's interface on its network cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("network {0:?} no longer exists; create it again")]
    NetworkGone(String),
    #[error("VM {vm} has no address on {network}")]
    NoLease { vm: String, network: String },
    #[error("cannot make the VM's TAP device")]
    Host(#[from] HostError),
    #[error("cannot read the network")]
    Store(#[from] crate::store::StoreError),
}

/// The managed networks a spec joins, with the fixed address if any.
fn bridge_nics(spec: &VmSpec) -> Vec<(&str, Option<Ipv4Addr>)> {
    spec.network
        .iter()
        .filter(|n| n.mode == NetMode::Bridge)
        .filter_map(|n| Some((n.network.as_deref()?, n.address)))
        .collect()
}

fn egress_of(spec: &VmSpec, network: &str) -> Egress {
    let nic = spec
        .network
        .iter()
        .find(|n| n.mode == NetMode::Bridge && n.network.as_deref() == Some(network));
    match nic.map(|n| &n.egress) {
        Some(skiff_spec::Egress::None) => Egress::None,
        Some(skiff_spec::Egress::Cidrs(c)) => Egress::Only(c.clone()),
        Some(skiff_spec::Egress::All) | None => Egress::All,
    }
}

/// The first IPv4 name server of the host that a guest can reach (not a
/// loopback one such as systemd-resolved's stub).
fn host_dns() -> Option<Ipv4Addr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .find(|a| !a.is_loopback())
}

impl Manager {
    pub async fn create_network(
        &self,
        name: &str,
        subnet: &str,
        dns: Option<&str>,
    ) -> Result<NetworkRecord, ManagerError> {
        skiff_net::check_network_name(name)?;
        let subnet: Subnet = subnet.parse()?;
        let dns = match dns {
            Some(d) => Some(
                d.parse::<Ipv4Addr>()
                    .map_err(|_| Invalid::Dns(d.to_owned()))?,
            ),
            None => host_dns(),
        };
        let existing = self.store.networks()?;
        if existing.iter().any(|n| n.name == name) {
            return Err(Conflict::NetworkExists(name.to_owned()).into());
        }
        if let Some(other) = existing.iter().find(|n| n.subnet.overlaps(&subnet)) {
            return Err(Conflict::SubnetOverlap {
                subnet,
                network: other.name.clone(),
                theirs: other.subnet,
            }
            .into());
        }
        self.host
            .require_net_admin(&format!("creating network {name}"))?;
        self.store.insert_network(name, subnet, dns)?;
        let bridge = skiff_net::bridge_name(name);
        let made = async {
            if self.host.link_exists(&bridge).await? {
                return Err(ManagerError::from(NetError::Io {
                    what: format!("create bridge {bridge}"),
                    source: std::io::Error::other(
                        "a link of that name already exists (a leftover? `skiff network prune` removes those)",
                    ),
                }));
            }
            self.host
                .create_bridge(&bridge, subnet.gateway(), subnet.prefix())
                .await?;
            let wired = self
                .host
                .enable_ip_forwarding()
                .map_err(ManagerError::from)
                .and_then(|()| self.refresh_rules(name));
            if let Err(e) = wired {
                // Nothing half-made: the bridge and any rules go again.
                let _ = self.host.delete_link(&bridge).await;
                let _ = self
                    .host
                    .apply_rules(&nft::removal(name), "remove the rules of a failed network");
                return Err(e);
            }
            Ok(())
        }
        .await;
        if let Err(e) = made {
            let _ = self.store.delete_network(name);
            return Err(e);
        }
        self.store.network(name)?.ok_or_else(|| {
            ManagerError::internal(
                format!("read network {name} back"),
                "it vanished from the state database",
            )
        })
    }

    pub async fn remove_network(&self, name: &str) -> Result<(), ManagerError> {
        let Some(net) = self.store.network(name)? else {
            return Err(Missing::Network(name.to_owned()).into());
        };
        if !net.leases.is_empty() {
            return Err(Conflict::NetworkInUse {
                network: name.to_owned(),
                vms: net.leases.iter().map(|l| l.vm.clone()).collect(),
            }
            .into());
        }
        self.host
            .require_net_admin(&format!("removing network {name}"))?;
        self.host.delete_link(&net.bridge).await?;
        self.host
            .apply_rules(&nft::removal(name), &format!("remove the rules of {name}"))?;
        self.store.delete_network(name)?;
        Ok(())
    }

    /// Remove what crashed runs left: bridges, TAPs and rule tables of no
    /// known network or running VM, and leases of VMs that are gone.
    pub async fn prune_networks(&self) -> Result<PruneReport, ManagerError> {
        let mut report = PruneReport {
            leases: self.store.drop_orphan_leases()?,
            ..PruneReport::default()
        };
        self.host.require_net_admin("pruning networks")?;
        let known: Vec<String> = self.store.networks()?.into_iter().map(|n| n.name).collect();
        let vms = self.store.list()?;
        let host = &self.host;
        for bridge in host.links_with_prefix(skiff_net::BRIDGE_PREFIX).await? {
            let net = &bridge[skiff_net::BRIDGE_PREFIX.len()..];
            if !known.iter().any(|k| k == net) && host.delete_link(&bridge).await? {
                report.links.push(bridge);
            }
        }
        for tap in host.links_with_prefix(skiff_net::TAP_PREFIX).await? {
            let in_use = vms
                .iter()
                .any(|v| skiff_net::tap_name(&v.id) == tap && v.qemu.is_some_and(|q| q.is_alive()));
            if !in_use && host.delete_link(&tap).await? {
                report.links.push(tap);
            }
        }
        for net in host.networks_with_tables()? {
            if !known.contains(&net) {
                host.apply_rules(&nft::removal(&net), "remove leftover rules")?;
                report.tables.push(nft::table_name(&net));
            }
        }
        Ok(report)
    }

    /// Rewrite a network's rules from its leases and its VMs' specs.
    pub(super) fn refresh_rules(&self, network: &str) -> Result<(), ManagerError> {
        let Some(net) = self.store.network(network)? else {
            return Ok(());
        };
        let vms = self.store.list()?;
        let rules = NetworkRules {
            name: net.name.clone(),
            subnet: net.subnet,
            vms: net
                .leases
                .iter()
                .map(|l| {
                    let vm = vms.iter().find(|v| v.name == l.vm);
                    VmRule {
                        address: l.address,
                        // A lease whose VM is gone gets nothing out.
                        egress: vm.map_or(Egress::None, |v| egress_of(&v.spec, network)),
                        port: vm.map(|v| VmPort {
                            tap: skiff_net::tap_name(&v.id),
                            mac: skiff_vmm::usernet::mac_for(&v.id),
                        }),
                    }
                })
                .collect(),
        };
        self.host.apply_rules(
            &nft::ruleset(&rules),
            &format!("update the rules of {network}"),
        )?;
        Ok(())
    }

    /// Take (or keep) the leases a spec needs and release the others, then
    /// update the rules of every network concerned.
    pub(super) fn sync_leases(&self, spec: &VmSpec) -> Result<(), ManagerError> {
        let nics = bridge_nics(spec);
        let before: Vec<String> = self
            .store
            .leases()?
            .into_iter()
            .filter(|l| l.vm == spec.name)
            .map(|l| l.network)
            .collect();
        if nics.is_empty() && before.is_empty() {
            return Ok(());
        }
        for (network, fixed) in &nics {
            self.store.lease(&spec.name, network, *fixed)?;
        }
        if !nics.is_empty() {
            // After leasing, so that a missing network is named first; the
            // caller releases the leases when this fails.
            self.host.require_net_admin("a VM on a managed network")?;
        }
        let keep: Vec<&str> = nics.iter().map(|(n, _)| *n).collect();
        self.store.release_leases(&spec.name, &keep)?;
        let mut touched: Vec<&str> = keep.clone();
        touched.extend(before.iter().map(String::as_str));
        touched.sort_unstable();
        touched.dedup();
        for network in touched {
            self.refresh_rules(network)?;
        }
        Ok(())
    }

    /// Give back all leases of a VM that is being removed.
    pub(super) fn release_vm(&self, name: &str) -> Result<(), ManagerError> {
        let networks: Vec<String> = self
            .store
            .leases()?
            .into_iter()
            .filter(|l| l.vm == name)
            .map(|l| l.network)
            .collect();
        self.store.release_leases(name, &[])?;
        for n in networks {
            self.refresh_rules(&n)?;
        }
        Ok(())
    }

    /// Create the VM's TAP on its network's bridge; the NIC for its plan.
    pub(super) async fn prepare_tap(
        &self,
        rec: &VmRecord,
    ) -> Result<Option<skiff_vmm::TapNic>, TapError> {
        let Some((network, _)) = bridge_nics(&rec.spec).into_iter().next() else {
            return Ok(None);
        };
        self.tap_on(network, &rec.name, &rec.id).await.map(Some)
    }

    /// A TAP for the VM (lease holder `vm`, id `vm_id`) on `network`'s
    /// bridge, and the NIC that uses it.
    async fn tap_on(
        &self,
        network: &str,
        vm: &str,
        vm_id: &str,
    ) -> Result<skiff_vmm::TapNic, TapError> {
        let net = self
            .store
            .network(network)?
            .ok_or_else(|| TapError::NetworkGone(network.to_owned()))?;
        let lease = net
            .leases
            .iter()
            .find(|l| l.vm == vm)
            .ok_or_else(|| TapError::NoLease {
                vm: vm.to_owned(),
                network: network.to_owned(),
            })?;
        let tap = skiff_net::tap_name(vm_id);
        let wired = async {
            // A TAP of an earlier boot that nobody removed (daemon killed).
            self.host.delete_link(&tap).await?;
            self.host.create_tap(&tap, &net.bridge).await
        }
        .await;
        wired?;
        Ok(skiff_vmm::TapNic {
            ifname: tap,
            address: format!("{}/{}", lease.address, net.subnet.prefix()),
            gateway: net.gateway.to_string(),
            dns: net.dns.map(|d| d.to_string()),
        })
    }

    /// Remove a VM's TAP (after its QEMU is gone).
    pub(super) async fn remove_tap(&self, vm_id: &str) {
        let _ = self.host.delete_link(&skiff_net::tap_name(vm_id)).await;
    }

    /// The guest address of a VM on its managed network, if it has one.
    pub fn bridge_address(&self, name: &str) -> Option<Ipv4Addr> {
        let leases = self.store.leases().ok()?;
        leases.into_iter().find(|l| l.vm == name).map(|l| l.address)
    }
}
