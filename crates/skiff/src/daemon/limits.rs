//! Host-side limits of a VM: its QEMU and vsock helper in a cgroup of their
//! own with a memory limit (guest memory plus QEMU's overhead) and a CPU
//! quota (its vCPUs), created at boot and removed when they are gone.

use super::manager::Manager;
use super::store::VmRecord;
use std::time::Duration;

impl Manager {
    fn vm_cgroup(&self, rec: &VmRecord) -> Option<skiff_vmm::cgroup::VmCgroup> {
        let h = self.cgroups.as_ref()?;
        let limits = skiff_vmm::cgroup::Limits::for_vm(rec.spec.memory_mib, rec.spec.vcpus);
        let (dirs, _) = skiff_vmm::cgroup::plan(h, &format!("vm-{}", rec.id), &limits);
        Some(skiff_vmm::cgroup::VmCgroup { dirs })
    }

    /// Put a just-launched VM's processes in a cgroup with its limits.
    pub(super) fn limit(
        &self,
        rec: &VmRecord,
        limits: &skiff_vmm::cgroup::Limits,
        vm: &skiff_vmm::Launched,
    ) -> Result<(), String> {
        let Some(h) = &self.cgroups else {
            return Ok(());
        };
        let cg = skiff_vmm::cgroup::VmCgroup::create(h, &format!("vm-{}", rec.id), limits)
            .map_err(|e| format!("cannot set the VM's host limits (cgroup): {e}"))?;
        for pid in [vm.qemu.process.pid, vm.vsock.process.pid] {
            cg.add(pid)
                .map_err(|e| format!("cannot put process {pid} in the VM's cgroup: {e}"))?;
        }
        Ok(())
    }

    /// Remove a VM's cgroup once its processes are gone.
    pub(super) async fn remove_cgroup(&self, rec: &VmRecord) {
        let Some(cg) = self.vm_cgroup(rec) else {
            return;
        };
        // The kernel lets an emptied cgroup go only after its last task
        // has fully exited; give it a moment.
        for _ in 0..50 {
            cg.remove();
            if cg.dirs.iter().all(|d| !d.exists()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
