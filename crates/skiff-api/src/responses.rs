//! Response bodies that are plain values (the CLI reads them back typed).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every error: a sentence saying what was wrong and how to fix it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorBody {
    pub error: String,
}

/// What `apply` did to one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApplyChange {
    pub name: String,
    /// created, updated, restarted, unchanged
    pub action: String,
    /// Top-level spec fields that changed.
    pub changed: Vec<String>,
}

/// One volume and the VMs whose specs use it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VolumeInfo {
    pub name: String,
    pub size_mib: u64,
    pub used_by: Vec<String>,
}

/// What `network prune` removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct PruneReport {
    pub links: Vec<String>,
    pub tables: Vec<String>,
    pub leases: usize,
}

/// How a background command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommandEnd {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Why there is no exit status (the VM went away).
    pub error: Option<String>,
}

/// A background command: its output so far and, once it ended, how.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CommandState {
    pub id: String,
    pub running: bool,
    #[serde(flatten)]
    pub ended: Option<CommandEnd>,
    pub stdout: String,
    pub stderr: String,
    pub dropped: u64,
}

/// A process of a VM, as the daemon recorded it (pid and kernel start time,
/// so that a reused pid is never mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessInfo {
    pub pid: i32,
    pub start_time: u64,
}

/// One VM: its spec, where it is in its life, and its processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Vm {
    pub name: String,
    pub id: String,
    pub spec: skiff_spec::VmSpec,
    pub spec_hash: String,
    pub state: crate::VmState,
    /// Why it is in that state, for humans ("service failed", ...).
    pub note: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub qemu: Option<ProcessInfo>,
    pub vsock: Option<ProcessInfo>,
    pub run_dir: Option<String>,
    pub boots: i64,
    pub restarts: i64,
    /// A `skiff run` VM: removed when its command ends.
    #[serde(default)]
    pub ephemeral: bool,
}

/// A VM's address on a managed network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Lease {
    pub network: String,
    pub address: std::net::Ipv4Addr,
    pub vm: String,
}

/// A managed network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Network {
    pub name: String,
    /// CIDR, like `10.88.0.0/24`.
    pub subnet: String,
    pub gateway: std::net::Ipv4Addr,
    pub bridge: String,
    pub dns: Option<std::net::Ipv4Addr>,
    pub created_at: i64,
    pub leases: Vec<Lease>,
}

/// A warm pool and how many of its sandboxes are in each state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Pool {
    pub name: String,
    /// The spec of each sandbox (its name is replaced per VM).
    pub template: skiff_spec::VmSpec,
    pub size: u32,
    /// Time to live of a taken sandbox.
    pub ttl_secs: u64,
    pub created_at: i64,
    /// Booted and waiting to be taken.
    pub ready: usize,
    /// Booted, then paused (a pausable pool with `awake` set): taken with
    /// a resume instead of a boot.
    #[serde(default)]
    pub sleeping: usize,
    /// How many ready sandboxes stay running (none: all).
    #[serde(default)]
    pub awake: Option<u32>,
    /// Being created or booted.
    pub booting: usize,
    pub taken: usize,
}

/// A sandbox of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sandbox {
    pub vm: String,
    pub pool: String,
    pub taken: bool,
    /// Unix seconds; only for taken sandboxes.
    pub expires_at: Option<i64>,
    /// The address on its managed network, if it has one.
    pub address: Option<String>,
}

/// What a VM uses now, as `GET /v1/stats` answers: counters since its
/// QEMU started (a rate needs two samples; `time_ms` says when each was
/// taken). A value the host cannot see (a stopped VM, user-mode
/// networking) is null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VmStats {
    pub vm: String,
    pub state: crate::VmState,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// CPU time of its QEMU, user and system.
    pub cpu_seconds: Option<f64>,
    /// Resident memory of its QEMU.
    pub memory_bytes: Option<u64>,
    /// The memory the guest was given.
    pub memory_limit_bytes: u64,
    /// Received by the guest through its TAP (bridge networking only).
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    /// Read and written by its QEMU to storage: the VM's disks, mostly.
    pub disk_read_bytes: Option<u64>,
    pub disk_write_bytes: Option<u64>,
}

/// A VM's saved state under a tag, from which new VMs start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Snapshot {
    pub tag: String,
    /// The VM it was taken of.
    pub vm: String,
    /// The spec each VM started from it gets (its name replaced; no fixed
    /// address, port forwards, domains or autostart).
    pub spec: skiff_spec::VmSpec,
    pub created_at: i64,
    /// Bytes of saved state.
    pub size: u64,
}

/// A file of a VM as its agent sees it (`/v1/vms/{name}/files…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileEntry {
    pub name: String,
    /// Absolute, in the guest.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// Last modification, nanoseconds since 1970.
    pub modified_ns: i64,
    /// Where a symlink points.
    #[serde(default)]
    pub target: Option<String>,
}
