//! What the reverse proxy needs of a spec before it is created or applied.

impl super::Manager {
    /// What the proxy needs of a spec before it is created or applied: no
    /// domain another VM serves, and a certificate that loads.
    pub fn check_http(&self, spec: &skiff_spec::VmSpec) -> Result<(), super::ManagerError> {
        use super::ManagerError;
        let Some(http) = &spec.http else {
            return Ok(());
        };
        for other in self.store.list()? {
            if other.name == spec.name {
                continue;
            }
            let theirs = other.spec.http.iter().flat_map(|h| &h.domains);
            if let Some(d) = theirs.into_iter().find(|d| http.domains.contains(d)) {
                return Err(ManagerError::Conflict(format!(
                    "vm.{}.http.domains: {d:?} is already served by VM {:?}; a domain routes to one VM",
                    spec.name, other.name
                )));
            }
        }
        if let skiff_spec::TlsSpec::Files { cert, key } = &http.tls {
            crate::certs::load_pem(cert, key).map_err(|e| {
                ManagerError::InvalidSpec(format!(
                    "vm.{}.http.tls: {}",
                    spec.name,
                    crate::support::error_chain(&e)
                ))
            })?;
        }
        Ok(())
    }
}
