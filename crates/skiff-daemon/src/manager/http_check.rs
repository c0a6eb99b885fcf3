//! What the reverse proxy needs of a spec before it is created or applied.

impl super::Manager {
    /// What the proxy needs of a spec before it is created or applied: no
    /// domain another VM serves, and a certificate that loads.
    pub fn check_http(&self, spec: &skiff_spec::VmSpec) -> Result<(), super::ManagerError> {
        let Some(http) = &spec.http else {
            return Ok(());
        };
        for other in self.store.list()? {
            if other.name == spec.name {
                continue;
            }
            let theirs = other.spec.http.iter().flat_map(|h| &h.domains);
            if let Some(d) = theirs.into_iter().find(|d| http.domains.contains(d)) {
                return Err(super::Conflict::DomainTaken {
                    vm: spec.name.clone(),
                    domain: d.clone(),
                    other: other.name,
                }
                .into());
            }
        }
        if let skiff_spec::TlsSpec::Files { cert, key } = &http.tls {
            crate::certs::load_pem(cert, key).map_err(|source| super::Invalid::Tls {
                vm: spec.name.clone(),
                source,
            })?;
        }
        Ok(())
    }
}
