//! The one road from a spec to running processes starts here: [`resolve`]
//! turns a [`VmSpec`], the facts of this host and the artifacts prepared
//! for this boot into a [`VmPlan`] that holds every decision (kernel,
//! initrd, root, drives, shares, NIC, kernel command line, host limits, the
//! user QEMU runs as, the exact command lines). It does no I/O, so tests
//! assert on a VM's plan without booting it. The daemon (every VM, `skiff
//! run` included) and `skiff run --standalone` both go through it.

use skiff_spec::{Egress, NetMode, VmSpec};
use skiff_vmm::cgroup::Limits;
use skiff_vmm::{
    Accel, Backend, Drive, LaunchPlan, PlanError, ReadyProbe, ShareDir, TapNic, VmConfig,
};
use std::path::PathBuf;

/// What the plan needs to know about this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The accelerator decided for this host.
    pub accel: Accel,
    /// This boot's runtime directory (sockets).
    pub run_dir: PathBuf,
    pub console_log: PathBuf,
    pub qemu_binary: PathBuf,
    pub vsock_binary: PathBuf,
    /// skiff itself, which serves a pausable VM's control channel
    /// (`skiff serial-bridge`).
    pub bridge_binary: PathBuf,
    pub virtiofsd_binary: PathBuf,
    /// Drop QEMU's privileges to this user (a daemon running as root).
    pub run_as: Option<String>,
    /// This process runs as root.
    pub privileged: bool,
}

impl Host {
    /// This host: the guest's kernel and initrd (skiff's prepared image, or
    /// the guest's own), the programs found where skiff looks for them
    /// (environment, PATH, ~/.cargo/bin).
    pub fn here(
        (kernel, initrd): (PathBuf, PathBuf),
        accel: Accel,
        run_dir: PathBuf,
        console_log: PathBuf,
        run_as: Option<String>,
    ) -> Host {
        Host {
            kernel,
            initrd,
            accel,
            run_dir,
            console_log,
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            vsock_binary: crate::paths::vsock_backend(),
            bridge_binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("skiff")),
            virtiofsd_binary: crate::paths::helper("virtiofsd", "SKIFF_VIRTIOFSD"),
            run_as,
            privileged: nix::unistd::geteuid().is_root(),
        }
    }
}

/// What was made for this boot before planning it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Artifacts {
    /// The config, secrets, data and volume drives.
    pub drives: Vec<Drive>,
    /// The TAP of the VM's managed network, already on its bridge.
    pub tap: Option<TapNic>,
    /// Where the spec's `image` was found in the image cache.
    pub image_root: Option<PathBuf>,
    /// The VM's root disk (its writable layer over the shared base).
    pub root_disk: Option<skiff_vmm::RootDisk>,
    /// Owners of writable shares under a root daemon, by source.
    pub share_owners: std::collections::BTreeMap<PathBuf, skiff_vmm::Owner>,
}

/// Every decision about one boot of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlan {
    pub config: VmConfig,
    /// The processes, as the backend runs them.
    pub launch: LaunchPlan,
    /// Host-side limits of those processes (a cgroup).
    pub limits: Limits,
    /// When a guest without skiff's agent is up (none: once QEMU runs).
    pub ready: Option<ReadyProbe>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("vm.{name}: {} not supported by this version of skiff; remove them from the spec", missing.join(", "))]
    Unsupported {
        name: String,
        missing: Vec<&'static str>,
    },
    #[error("vm.{name}: image {image:?} is not in the image cache; build it with `skiff image build -f images/{image}.toml`")]
    ImageNotPrepared { name: String, image: String },
    #[error("vm.{name}: a managed network needs its TAP device, which was not prepared")]
    TapNotPrepared { name: String },
    #[error("vm.{name}: its root disk was not prepared")]
    DiskNotPrepared { name: String },
    #[error("vm.{name} cannot be planned")]
    Plan {
        name: String,
        #[source]
        source: PlanError,
    },
}

/// Spec features skiff validates but cannot provide yet. Refusing them is
/// better than running a VM that silently lacks its network.
pub fn check_supported(spec: &VmSpec) -> Result<(), ResolveError> {
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
    Err(ResolveError::Unsupported {
        name: spec.name.clone(),
        missing,
    })
}

/// The user-mode network of a spec, with its port forwards.
pub fn user_net(spec: &VmSpec) -> Option<skiff_vmm::UserNet> {
    if !spec.network.iter().any(|n| n.mode == NetMode::User) {
        return None;
    }
    let forwards = spec
        .forward_ports
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
    Some(skiff_vmm::UserNet {
        forwards,
        no_egress: spec.network.iter().any(|n| n.egress == Egress::None),
    })
}

/// The spec's shares as virtiofs devices; `owners` are those of writable
/// shares under a root daemon (see [`ShareDir::owner`]).
pub fn shares(
    spec: &VmSpec,
    owners: &std::collections::BTreeMap<PathBuf, skiff_vmm::Owner>,
) -> Vec<ShareDir> {
    spec.shares
        .iter()
        .map(|s| ShareDir {
            owner: if s.readonly {
                None
            } else {
                owners.get(&s.source).copied()
            },
            source: s.source.clone(),
            mount: skiff_proto::guest::MountArg {
                label: s.tag.clone(),
                target: s.target.clone(),
                readonly: s.readonly,
                noexec: false,
                nosuid: false,
                nodev: true,
            },
        })
        .collect()
}

/// Plan one boot of `spec` (whose VM id is `vm_id`) on `host` with the
/// `artifacts` made for it, for `backend`.
pub fn resolve(
    spec: &VmSpec,
    vm_id: &str,
    host: &Host,
    artifacts: Artifacts,
    backend: &dyn Backend,
) -> Result<VmPlan, ResolveError> {
    check_supported(spec)?;
    let name = || spec.name.clone();
    let rootfs = match (&spec.rootfs, &spec.image) {
        (Some(r), _) => Some(skiff_vmm::RootFs {
            source: r.path.clone(),
            writable: r.writable,
            owner: artifacts.share_owners.get(&r.path).copied(),
        }),
        (None, Some(image)) => Some(skiff_vmm::RootFs {
            source: artifacts
                .image_root
                .clone()
                .ok_or_else(|| ResolveError::ImageNotPrepared {
                    name: name(),
                    image: image.clone(),
                })?,
            writable: false,
            owner: None,
        }),
        (None, None) => None,
    };
    let bridged = spec.network.iter().any(|n| n.mode == NetMode::Bridge);
    if bridged && artifacts.tap.is_none() {
        return Err(ResolveError::TapNotPrepared { name: name() });
    }
    if spec.disk.is_some() && artifacts.root_disk.is_none() {
        return Err(ResolveError::DiskNotPrepared { name: name() });
    }
    let init = match (&spec.init, spec.own_initrd()) {
        (_, Some(_)) if spec.guest == skiff_spec::GuestProfile::Mvm => skiff_vmm::GuestInit::Mvm,
        (_, Some(_)) => skiff_vmm::GuestInit::Own,
        (skiff_spec::InitSpec::Agent, None) => skiff_vmm::GuestInit::Agent,
        (skiff_spec::InitSpec::System { target }, None) => skiff_vmm::GuestInit::System {
            target: target.clone(),
        },
    };
    let ready = ready_probe(spec, artifacts.tap.as_ref());
    let config = VmConfig {
        cpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        // A guest's own initrd goes with its own kernel (the spec names
        // both); skiff's initramfs with the kernel it was built for.
        kernel: match (
            spec.own_initrd(),
            spec.kernel.as_ref().and_then(|k| k.path.clone()),
        ) {
            (Some(_), Some(path)) => path,
            _ => host.kernel.clone(),
        },
        initrd: spec
            .own_initrd()
            .map_or_else(|| host.initrd.clone(), PathBuf::from),
        accel: host.accel,
        extra_cmdline: spec
            .kernel
            .as_ref()
            .map(|k| k.params.clone())
            .unwrap_or_default(),
        run_dir: host.run_dir.clone(),
        qemu_binary: host.qemu_binary.clone(),
        vsock_binary: host.vsock_binary.clone(),
        transport: match spec.pausable && init.has_agent() {
            true => skiff_vmm::Transport::Serial {
                bridge: host.bridge_binary.clone(),
            },
            false => skiff_vmm::Transport::Vsock,
        },
        console_log: host.console_log.clone(),
        net: user_net(spec),
        tap: artifacts.tap,
        vm_id: vm_id.to_owned(),
        drives: artifacts.drives,
        shares: shares(spec, &artifacts.share_owners),
        virtiofsd_binary: host.virtiofsd_binary.clone(),
        rootfs,
        run_as: host.run_as.clone(),
        privileged: host.privileged,
        root_disk: artifacts.root_disk,
        init,
    };
    let launch = backend.plan(&config).map_err(|source| ResolveError::Plan {
        name: name(),
        source,
    })?;
    Ok(VmPlan {
        limits: limits_for(spec),
        config,
        launch,
        ready,
    })
}

/// Where the daemon checks that a guest without an agent is up: its
/// console, or its `ready.tcp` port at its address on a managed network
/// (an accept answers), or through the user-mode forward of that port
/// (loopback when the forward listens on every address; there the guest's
/// server must greet, see [`ReadyProbe::Tcp`]).
pub fn ready_probe(spec: &VmSpec, tap: Option<&TapNic>) -> Option<ReadyProbe> {
    match spec.ready.as_ref()? {
        skiff_spec::ReadySpec::Console(pattern) => Some(ReadyProbe::Console(pattern.clone())),
        skiff_spec::ReadySpec::Tcp(port) => {
            let on_tap = tap
                .and_then(|t| {
                    t.address
                        .split('/')
                        .next()?
                        .parse::<std::net::IpAddr>()
                        .ok()
                })
                .map(|ip| ReadyProbe::Tcp {
                    addr: std::net::SocketAddr::new(ip, *port),
                    direct: true,
                });
            let forwarded = spec
                .forward_ports
                .iter()
                .find(|f| f.guest_port == *port && f.protocol == skiff_spec::Protocol::Tcp)
                .map(|f| {
                    let ip = if f.host_address.is_unspecified() {
                        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
                    } else {
                        f.host_address
                    };
                    ReadyProbe::Tcp {
                        addr: std::net::SocketAddr::new(ip, f.host_port),
                        direct: false,
                    }
                });
            on_tap.or(forwarded)
        }
    }
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;

/// The host-side limits of a VM's processes.
pub fn limits_for(spec: &VmSpec) -> Limits {
    Limits::for_vm(spec.memory_mib, spec.vcpus)
}
