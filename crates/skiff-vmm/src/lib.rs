//! skiff's hypervisor backends: a VM config becomes a [`plan::LaunchPlan`]
//! (pure data, unit-tested) through a [`Backend`], and [`launch::launch`]
//! turns any plan into running processes.

pub mod accel;
pub mod agent;
pub mod backend;
pub mod cgroup;
pub mod console;
pub mod launch;
pub mod plan;
pub mod process;
pub mod qmp;
pub mod ready;
pub mod running;
pub mod scope;
pub mod serial_bridge;
pub mod setid_filter;
pub mod snapshot;
pub mod tap;
pub mod usernet;

pub use accel::{decide, Accel, AccelChoice, AccelDecision, HostKvm};
pub use agent::{AgentConn, AgentError, AgentReader, AgentWriter, ConnLease};
pub use backend::{Backend, BackendKind};
pub use launch::{launch, Helper, LaunchError, LaunchOptions, Launched};
pub use plan::{
    plan, DiskFormat, Drive, GuestInit, LaunchPlan, Owner, PlanError, RootDisk, RootFs, ShareDir,
    Transport, VmConfig, ROOT_DISK_SERIAL,
};
pub use process::ProcessRef;
pub use ready::ReadyProbe;
pub use running::RunningVm;
pub use tap::TapNic;
pub use usernet::UserNet;
