//! What the manager's operations refuse and why, typed so that the API can
//! pick a status code and print the whole chain of causes.

use crate::store::StoreError;
use skiff_net::{NetError, Subnet};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no VM named {0:?}")]
    NotFound(String),
    /// An image the request names is not cached, and pulling it failed.
    #[error("cannot pull image {image:?}")]
    Pull {
        image: String,
        #[source]
        source: skiff_oci::OciError,
    },
    /// Something else that does not exist (a pool, a network, a sandbox).
    #[error(transparent)]
    Missing(#[from] Missing),
    #[error("a VM named {0:?} already exists")]
    Exists(String),
    /// The request or spec asks for something not allowed.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("cannot {action} {name:?}: it is {state}")]
    WrongState {
        name: String,
        action: &'static str,
        state: &'static str,
    },
    #[error("VM {name:?} failed to start")]
    StartFailed {
        name: String,
        #[source]
        source: Box<super::boot::BootError>,
    },
    #[error("cannot reach the agent of {name:?}")]
    Agent {
        name: String,
        #[source]
        source: skiff_vmm::AgentError,
    },
    /// A pause or resume that did not happen.
    #[error(transparent)]
    Pause(#[from] super::pause::PauseError),
    /// The daemon lacks a privilege (a capability) for this.
    #[error(transparent)]
    Forbidden(NetError),
    /// Conflicts with what exists (a taken address, an overlapping subnet).
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// Something on the host failed (a file, the database, an image);
    /// `what` says what was being done, the source why.
    #[error("internal error: cannot {what}")]
    Internal {
        what: String,
        #[source]
        source: Cause,
    },
}

pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl ManagerError {
    /// An internal error: `what` was being done when `source` happened.
    pub fn internal(what: impl Into<String>, source: impl Into<Cause>) -> ManagerError {
        ManagerError::Internal {
            what: what.into(),
            source: source.into(),
        }
    }
}

impl From<StoreError> for ManagerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(n) => ManagerError::Exists(n),
            StoreError::NotFound(n) => ManagerError::NotFound(n),
            StoreError::Illegal { name, source } => ManagerError::WrongState {
                name,
                action: "change",
                state: source.state.as_str(),
            },
            other => ManagerError::internal("use the state database", other),
        }
    }
}

/// Something named in a request that does not exist.
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error("no pool named {0:?}; see `skiff pool ls`")]
    Pool(String),
    #[error("no network named {0:?}; see `skiff network ls`")]
    Network(String),
    #[error("no sandbox named {0:?}")]
    Sandbox(String),
    #[error("no taken sandbox named {0:?} (only sandboxes taken from a pool have a time to live)")]
    TakenSandbox(String),
    #[error("no snapshot tagged {0:?}; see `skiff snapshot ls`")]
    Snapshot(String),
}

/// A request or spec that asks for something not allowed.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("invalid {field}")]
    Name {
        field: &'static str,
        #[source]
        source: skiff_spec::NameError,
    },
    #[error("{field}: at most {max} characters ({why})")]
    NameTooLong {
        field: &'static str,
        max: usize,
        why: &'static str,
    },
    #[error("{field}: {value} is out of range; allowed: {allowed}")]
    OutOfRange {
        field: &'static str,
        value: String,
        allowed: String,
    },
    #[error("dns: {0:?} is not an IPv4 address")]
    Dns(String),
    #[error("pausable sandboxes cannot boot an image: its root is a shared directory, which QEMU cannot save")]
    PausableImage,
    #[error("awake: only a pausable pool's sandboxes can sleep; add pausable")]
    AwakeNotPausable,
    #[error("cannot snapshot {0:?}: its writable disks (volumes, a data drive or a root disk) cannot be shared by the VMs started from it yet")]
    SnapshotDisks(String),
    #[error(
        "snapshot {tag:?} cannot be used; remove it (`skiff snapshot rm {tag}`) and take it again"
    )]
    Snapshot {
        tag: String,
        #[source]
        source: skiff_vmm::snapshot::SnapshotError,
    },
    #[error("sleep_after_secs: only a pausable pool's sandboxes can sleep; add pausable")]
    SleepNotPausable,
    #[error("no image named {0:?}; build one with `skiff image build -f images/{0}.toml`")]
    NoImage(String),
    #[error(
        "no network named {0:?}; create it with `skiff network create {0} --subnet 10.88.0.0/24`"
    )]
    NoNetwork(String),
    #[error("vm.{vm}.http.tls")]
    Tls {
        vm: String,
        #[source]
        source: crate::certs::CertError,
    },
    /// A spec feature skiff validates but cannot provide yet.
    #[error(transparent)]
    Unsupported(crate::resolve::ResolveError),
    #[error(transparent)]
    Network(NetError),
    #[error(transparent)]
    Run(#[from] crate::run_spec::RunSpecError),
}

/// A request that conflicts with what exists.
#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    #[error("VM {0:?} boots its own initrd and has no skiff agent: exec, cp, shell and the commands API need one; reach it over its network (ssh), or boot it through skiff's initramfs (remove kernel.initrd)")]
    NoAgent(String),
    #[error("a pool named {0:?} already exists")]
    PoolExists(String),
    #[error("a snapshot tagged {0:?} already exists; remove it first (`skiff snapshot rm {0}`) or choose another tag")]
    SnapshotExists(String),
    #[error(
        "pool {pool:?} has no ready sandbox (size {size}); wait for it to refill, or resize it"
    )]
    PoolEmpty { pool: String, size: u32 },
    #[error("a network named {0:?} already exists")]
    NetworkExists(String),
    #[error("{subnet} overlaps network {network:?} ({theirs}); choose a subnet that does not")]
    SubnetOverlap {
        subnet: Subnet,
        network: String,
        theirs: Subnet,
    },
    #[error("network {network:?} is used by {}; remove them first (skiff rm NAME)", vms.join(", "))]
    NetworkInUse { network: String, vms: Vec<String> },
    #[error("vm.{vm}.http.domains: {domain:?} is already served by VM {other:?}; a domain routes to one VM")]
    DomainTaken {
        vm: String,
        domain: String,
        other: String,
    },
    /// No free address, or a fixed address another VM holds.
    #[error(transparent)]
    Address(crate::netstore::LeaseError),
    #[error(transparent)]
    Network(NetError),
}
