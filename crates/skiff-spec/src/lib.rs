//! skiff's VM spec: the TOML a user writes, the typed value the daemon
//! stores and acts on, and validation that reports every problem at once,
//! each with its field path and what is allowed.
//!
//! ```toml
//! [vm.web]
//! vcpus = 2
//! memory = "512M"
//! command = ["python3", "-m", "http.server", "8080"]
//! forward_ports = ["8080:8080"]
//! restart = { policy = "on-failure", max_retries = 5, backoff = "2s" }
//! ```
//!
//! This crate does no I/O: paths are checked for form (absolute), not for
//! existence; the daemon checks existence when it acts.

mod parse;
mod units;

pub use parse::{
    check_domain, parse_file, parse_forward, parse_vm_table, DomainError, ForwardError,
};
pub use units::{parse_duration_ms, parse_size_mib, UnitError};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

pub const MIN_MEMORY_MIB: u32 = 64;
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;
pub const MAX_VCPUS: u32 = 255;
pub const MAX_NAME_LEN: usize = 63;

/// One VM, validated and with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: Option<KernelSpec>,
    pub image: Option<String>,
    pub hypervisor: Hypervisor,
    pub accel: Accel,
    pub network: Vec<NetworkSpec>,
    pub forward_ports: Vec<PortForward>,
    pub shares: Vec<Share>,
    pub volumes: Vec<Volume>,
    /// The VM's own persistent data drive (label `skiff-data`).
    pub data: Option<DataDrive>,
    /// Boot into this host directory instead of the default image.
    pub rootfs: Option<RootFsSpec>,
    /// The root filesystem on a block device: a disk image shared read-only
    /// by every VM that uses it, with a copy-on-write layer per VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskSpec>,
    /// Who is PID 1: skiff's agent, or the guest's own init (systemd).
    #[serde(default, skip_serializing_if = "InitSpec::is_agent")]
    pub init: InitSpec,
    /// The guest's host name (default: what the image says, else "skiff").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// A zone of the guest's /usr/share/zoneinfo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Login users created at boot, with their SSH keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserSpec>,
    /// The guest contract the VM is booted with: skiff's own, or mvm's.
    #[serde(default, skip_serializing_if = "GuestProfile::is_skiff")]
    pub guest: GuestProfile,
    /// When a guest without skiff's agent counts as up (none: once QEMU
    /// runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadySpec>,
    pub env: BTreeMap<String, String>,
    /// Files of the secrets drive, by name, and where the daemon reads them
    /// at each boot (never stored).
    pub secrets: BTreeMap<String, SecretSource>,
    /// What the guest runs after boot (a service); none: the VM idles and
    /// takes `exec` requests.
    pub command: Option<Vec<String>>,
    pub autostart: bool,
    /// The VM can be paused and resumed (`skiff pause`): its agent talks
    /// over a virtio-serial port, which QEMU can save, and it has no
    /// shared directories, which QEMU cannot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pausable: bool,
    /// A pausable VM with no exec, copy, command or proxied request for
    /// this long is paused; any of them wakes it again (none: it runs
    /// until stopped or paused by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_after_ms: Option<u64>,
    /// Whether `apply` restarts the VM when its spec changed.
    pub restart_if_changed: bool,
    pub restart: RestartPolicy,
    /// Served by the daemon's reverse proxy.
    #[serde(default)]
    pub http: Option<HttpSpec>,
}

/// A root filesystem on a block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub source: DiskSource,
    /// Keep the VM's writes to its root across stop/start and daemon
    /// restarts (a dev box); otherwise every boot starts from the base.
    pub persistent: bool,
}

/// Where a root disk's read-only base comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DiskSource {
    /// An image built from a recipe (`skiff image build`), as ext4.
    Image(String),
    /// A raw or qcow2 disk image file of the user's, never written to.
    File(PathBuf),
}

/// A login user of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// In the `sudo` group, with password-less sudo.
    #[serde(default)]
    pub sudo: bool,
}

/// The guest's PID 1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InitSpec {
    /// skiff's agent (fastest; one service per VM).
    #[default]
    Agent,
    /// The guest's own init (`/sbin/init`, systemd) from its root disk;
    /// skiff's agent runs as a service inside it. The VM is ready when
    /// `target` is active.
    System { target: String },
}

impl InitSpec {
    pub fn is_agent(&self) -> bool {
        *self == InitSpec::Agent
    }
}

/// How the daemon tells that a guest without skiff's agent (one that boots
/// its own initrd) is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReadySpec {
    /// A TCP port of the guest answers: at its address on a managed
    /// network, it accepts a connection; through a user-mode forward, its
    /// server sends something first (QEMU's forward accepts on the guest's
    /// behalf even while it boots).
    Tcp(u16),
    /// A line of the serial console matches this regular expression.
    Console(String),
}

/// What the guest expects of the host: which drives, labelled how, and
/// which kernel arguments.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum GuestProfile {
    /// skiff's: drives found by the agent by label, `skiff.*` arguments.
    #[default]
    Skiff,
    /// mvm's (Firecracker guests, seed 000): root ext4 on /dev/vda, then
    /// drives labelled `mvm-config` (ro), `mvm-secrets` (ro) and `mvm-data`
    /// (rw) as vdb, vdc and vdd; `mvm.ip=<cidr> mvm.gw=<gateway>` with
    /// mvm's console, panic, reboot and interface-name arguments. The
    /// guest brings its own kernel and initrd and has no skiff agent.
    Mvm,
}

impl GuestProfile {
    pub fn is_skiff(&self) -> bool {
        *self == GuestProfile::Skiff
    }
}

/// The longest `ready.console` pattern accepted.
pub const MAX_READY_PATTERN: usize = 256;

/// The unit a guest with its own init is ready at, unless the spec names one.
pub const DEFAULT_TARGET: &str = "multi-user.target";

/// The `http` section: what the daemon's reverse proxy routes to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    pub domains: Vec<String>,
    /// The guest port the service listens on.
    pub port: u16,
    pub tls: TlsSpec,
    pub health: Option<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsSpec {
    /// Plain HTTP only.
    None,
    /// A certificate the daemon makes for the domains.
    SelfSigned,
    /// PEM files, reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Failed checks in a row before the VM counts as unhealthy.
    pub unhealthy_after: u32,
}

impl VmSpec {
    /// The cached images the VM boots from: its `image`, then its disk's.
    pub fn images(&self) -> Vec<&str> {
        let disk = match self.disk.as_ref().map(|d| &d.source) {
            Some(DiskSource::Image(name)) => Some(name.as_str()),
            _ => None,
        };
        self.image.as_deref().into_iter().chain(disk).collect()
    }

    /// A spec with every default and the given name (what `[vm.NAME]` with
    /// no fields means).
    pub fn with_defaults(name: &str) -> VmSpec {
        VmSpec {
            name: name.to_owned(),
            vcpus: 1,
            memory_mib: 256,
            kernel: None,
            image: None,
            hypervisor: Hypervisor::Qemu,
            accel: Accel::Auto,
            network: Vec::new(),
            forward_ports: Vec::new(),
            shares: Vec::new(),
            volumes: Vec::new(),
            data: None,
            rootfs: None,
            disk: None,
            init: InitSpec::Agent,
            hostname: None,
            timezone: None,
            users: Vec::new(),
            guest: GuestProfile::Skiff,
            ready: None,
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            command: None,
            autostart: false,
            pausable: false,
            sleep_after_ms: None,
            restart_if_changed: true,
            restart: RestartPolicy::No,
            http: None,
        }
    }

    /// Whether skiff's agent runs in the guest: not when the guest boots
    /// its own initrd (`kernel.initrd`).
    pub fn has_agent(&self) -> bool {
        self.own_initrd().is_none()
    }

    /// The guest's own initrd, when it brings one.
    pub fn own_initrd(&self) -> Option<&std::path::Path> {
        self.kernel.as_ref().and_then(|k| k.initrd.as_deref())
    }

    /// A stable hash of the spec's content, to tell whether it changed.
    pub fn content_hash(&self) -> String {
        use sha2::Digest;
        // serde_json of these plain types cannot fail; BTreeMap keeps key order stable.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&sha2::Sha256::digest(&json)[..16])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    pub path: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    /// The guest's own initrd (built elsewhere: initramfs-tools, dracut,
    /// a microvm.nix runner), booted instead of skiff's, with no agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line arguments.
    pub params: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Hypervisor {
    Qemu,
}

/// How the guest CPU should run: hardware KVM, QEMU's emulation (TCG), or
/// whichever the host can do (auto).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}; use auto, kvm or tcg"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub mode: NetMode,
    /// The skiff network to join (bridge mode).
    pub network: Option<String>,
    /// A fixed address on that network; none: the next free one.
    pub address: Option<Ipv4Addr>,
    pub egress: Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NetMode {
    None,
    User,
    Bridge,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Egress {
    All,
    None,
    /// Only to these CIDRs (as written, validated).
    Cidrs(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub host_address: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// Host directory (absolute).
    pub source: PathBuf,
    /// Where it appears in the guest (absolute).
    pub target: String,
    pub tag: String,
    pub readonly: bool,
}

/// A VM's data drive: kept across stop, restart, `rm` and re-create of a VM
/// of the same name; deleted by `rm --volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataDrive {
    /// Mount point in the guest (absolute).
    pub target: String,
    pub size_mib: u32,
}

/// A host directory as the root filesystem: read-only under an overlay
/// in guest memory, or written directly when `writable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RootFsSpec {
    pub path: PathBuf,
    pub writable: bool,
}

/// Where a secret's value comes from when the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// A host file (absolute path), read by the daemon.
    File(PathBuf),
    /// An environment variable of the daemon.
    Env(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// A named volume (persistent, survives `rm` and re-create).
    pub name: String,
    /// Mount point in the guest (absolute).
    pub target: String,
    pub size_mib: Option<u32>,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum RestartPolicy {
    No,
    OnFailure {
        max_retries: Option<u32>,
        backoff_ms: u64,
        max_backoff_ms: u64,
    },
    Always {
        backoff_ms: u64,
        max_backoff_ms: u64,
    },
}

/// One problem in a spec, with the path of the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a spec file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "the spec has {n} problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("{name:?} is {len} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong { name: String, len: usize },
    #[error("{0:?} is not a valid name; use lowercase letters, digits and '-', starting and ending with a letter or digit")]
    BadCharacters(String),
}

/// Check a VM name: 1 to 63 characters, lowercase letters, digits and
/// hyphens, starting with a letter or digit (usable as a host name).
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok_chars || !ok_start || name.ends_with('-') {
        return Err(NameError::BadCharacters(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
