//! Port forwards of running VMs on managed networks, started and stopped
//! with the VM.

use crate::forward::PortInUse;
use crate::store::VmRecord;

/// Why a VM's port forwards cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("VM {0} has no address for its port forwards")]
    NoAddress(String),
    #[error(transparent)]
    Port(#[from] PortInUse),
}

impl super::Manager {
    /// Relay the spec's port forwards to the VM's address on its network.
    pub(super) fn start_forwards(&self, rec: &VmRecord) -> Result<(), ForwardError> {
        if rec.spec.forward_ports.is_empty() {
            return Ok(());
        }
        let addr = self
            .bridge_address(&rec.name)
            .ok_or_else(|| ForwardError::NoAddress(rec.name.clone()))?;
        let fw = crate::forward::start(&rec.spec.forward_ports, addr)?;
        let mut all = self.forwarders.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(rec.name.clone(), fw);
        Ok(())
    }

    pub(super) fn stop_forwards(&self, name: &str) {
        let mut all = self.forwarders.lock().unwrap_or_else(|p| p.into_inner());
        all.remove(name);
    }
}
