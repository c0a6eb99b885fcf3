//! Which VM serves a host name, read from the state database on each
//! request, so routes follow VMs as they come and go and specs change.

use crate::manager::Manager;
use crate::store::VmState;
use skiff_spec::TlsSpec;
use std::net::Ipv4Addr;

#[derive(Debug, Clone)]
pub struct Route {
    pub vm: String,
    pub vm_id: String,
    pub domains: Vec<String>,
    pub port: u16,
    pub tls: TlsSpec,
    pub running: bool,
    pub address: Option<Ipv4Addr>,
}

/// `Host` without its port, lower-cased.
pub fn host_name(host: &str) -> String {
    let h = if host.starts_with('[') {
        host.split(']')
            .next()
            .unwrap_or(host)
            .trim_start_matches('[')
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

impl Manager {
    pub fn route_for(&self, host: &str) -> Option<Route> {
        let vms = self.store.list().ok()?;
        let rec = vms.into_iter().find(|r| {
            r.spec
                .http
                .as_ref()
                .is_some_and(|h| h.domains.iter().any(|d| d == host))
        })?;
        let http = rec.spec.http.clone()?;
        Some(Route {
            address: self.bridge_address(&rec.name),
            running: rec.state == VmState::Running,
            vm: rec.name,
            vm_id: rec.id,
            domains: http.domains,
            port: http.port,
            tls: http.tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port_and_case() {
        assert_eq!(host_name("App.Example.Test:8443"), "app.example.test");
        assert_eq!(host_name("app.test"), "app.test");
        assert_eq!(host_name("app.test."), "app.test");
        assert_eq!(host_name("[::1]:80"), "::1");
    }
}
