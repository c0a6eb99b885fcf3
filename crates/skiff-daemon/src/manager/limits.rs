//! Host-side limits of a VM: its QEMU and vsock helper in a cgroup of their
//! own with a memory limit (guest memory plus QEMU's overhead) and a CPU
//! quota (its vCPUs), created at boot and removed when they are gone. The
//! cgroup itself is a host operation ([`crate::hostops::HostOps`]).

use crate::hostops::HostError;
use crate::manager::Manager;
use crate::store::VmRecord;

/// The cgroup of VM `id`.
fn cgroup_name(id: &str) -> String {
    format!("vm-{id}")
}

impl Manager {
    /// Put a just-launched VM's processes in a cgroup with its limits.
    pub(super) fn limit(
        &self,
        rec: &VmRecord,
        limits: &skiff_vmm::cgroup::Limits,
        pids: &[i32],
    ) -> Result<(), HostError> {
        self.host.create_cgroup(&cgroup_name(&rec.id), limits, pids)
    }

    /// Remove a VM's cgroup once its processes are gone.
    pub(super) async fn remove_cgroup(&self, rec: &VmRecord) {
        let _ = self.host.remove_cgroup(&cgroup_name(&rec.id)).await;
    }
}
