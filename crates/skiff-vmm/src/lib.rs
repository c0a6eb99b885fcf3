//! skiff's hypervisor backend: a VM config becomes a [`plan::LaunchPlan`]
//! (pure data, unit-tested), which [`launch::RunningVm`] turns into running
//! processes: QEMU's `microvm` machine plus a vhost-user vsock backend.

pub mod accel;
pub mod agent;
pub mod launch;
pub mod plan;

pub use accel::{decide, Accel, AccelChoice, AccelDecision, HostKvm};
pub use agent::{AgentConn, AgentError, AgentReader, AgentWriter};
pub use launch::{Console, LaunchError, RunningVm};
pub use plan::{plan, Drive, LaunchPlan, PlanError, RootFs, ShareDir, VmConfig};
pub mod detached;
pub use detached::{launch_detached, DetachedVm, ProcessRef};
pub mod usernet;
pub use usernet::UserNet;
pub mod cgroup;
pub mod tap;
pub use tap::TapNic;
