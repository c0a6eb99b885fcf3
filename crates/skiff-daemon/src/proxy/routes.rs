//! Which VM serves a host name. The table is built from the state database
//! and kept in memory until the database changes, so routes follow VMs as
//! they come and go and specs change, without a scan of every VM on each
//! request and each TLS handshake.

use crate::manager::Manager;
use crate::store::VmState;
use skiff_spec::TlsSpec;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// Routes by domain.
type Routes = Arc<HashMap<String, Route>>;

/// The routes, and the store generation they were read at.
#[derive(Default)]
pub struct RouteTable(Mutex<Option<(u64, Routes)>>);

#[derive(Debug, Clone)]
pub struct Route {
    pub vm: String,
    pub vm_id: String,
    pub domains: Vec<String>,
    pub port: u16,
    pub tls: TlsSpec,
    pub running: bool,
    /// It sleeps when idle (`sleep_after`): `running` may be stale.
    pub sleeps: bool,
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
        self.routes().get(host).cloned()
    }

    /// The routing table, read again only if the store changed since.
    fn routes(&self) -> Arc<HashMap<String, Route>> {
        // Read before building: a write during the build shows as a newer
        // generation next time, and the table is built again.
        let generation = self.store.generation();
        let mut table = self.routes.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, routes)) = table.as_ref() {
            if *at == generation {
                return routes.clone();
            }
        }
        let routes = Arc::new(self.build_routes());
        *table = Some((generation, routes.clone()));
        routes
    }

    fn build_routes(&self) -> HashMap<String, Route> {
        let (Ok(vms), leases) = (self.store.list(), self.store.leases().unwrap_or_default()) else {
            return HashMap::new();
        };
        let mut routes = HashMap::new();
        for rec in vms {
            let Some(http) = rec.spec.http.clone() else {
                continue;
            };
            let route = Route {
                address: leases.iter().find(|l| l.vm == rec.name).map(|l| l.address),
                running: rec.state == VmState::Running,
                sleeps: rec.spec.sleep_after_ms.is_some(),
                vm: rec.name,
                vm_id: rec.id,
                domains: http.domains.clone(),
                port: http.port,
                tls: http.tls,
            };
            for domain in http.domains {
                // Domains are unique across VMs (the manager refuses a
                // second claim); the first one read wins all the same.
                routes.entry(domain).or_insert_with(|| route.clone());
            }
        }
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(domain: &str) -> skiff_spec::VmSpec {
        let text = format!("[vm.web]\nnetwork = {{ mode = \"bridge\", network = \"lan\" }}\n[vm.web.http]\ndomains = [\"{domain}\"]\nport = 8080\n");
        skiff_spec::parse_file(&text).expect("spec").remove(0)
    }

    #[test]
    fn the_routing_table_follows_the_store() {
        use skiff_api::lifecycle::Event;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(&dir.path().join("state.db")).expect("store");
        let m = Manager::new(
            store,
            crate::manager::DaemonPaths {
                state_dir: dir.path().join("state"),
                runtime_dir: dir.path().join("run"),
            },
            Box::new(skiff_vmm::backend::Qemu),
            Arc::new(crate::hostops::RecordingHost::default()),
        );
        assert!(m.route_for("a.test").is_none());
        m.store
            .insert("id1", &spec("a.test"), false)
            .expect("insert");
        let r = m.route_for("a.test").expect("a route once the VM exists");
        assert_eq!((r.vm.as_str(), r.port, r.running), ("web", 8080, false));
        m.store.transition("web", Event::Start, "").expect("start");
        m.store
            .transition("web", Event::Booted, "")
            .expect("booted");
        assert!(
            m.route_for("a.test").expect("route").running,
            "the new state is seen"
        );
        // Served from memory while nothing changes.
        let first = m.routes();
        assert!(
            Arc::ptr_eq(&first, &m.routes()),
            "read again without a change"
        );
        m.store.update_spec(&spec("b.test")).expect("update");
        assert!(m.route_for("a.test").is_none(), "the old domain is gone");
        assert!(m.route_for("b.test").is_some(), "the new one routes");
        m.store.delete("web").expect("delete");
        assert!(m.route_for("b.test").is_none());
    }

    #[test]
    fn host_names_lose_their_port_and_case() {
        assert_eq!(host_name("App.Example.Test:8443"), "app.example.test");
        assert_eq!(host_name("app.test"), "app.test");
        assert_eq!(host_name("app.test."), "app.test");
        assert_eq!(host_name("[::1]:80"), "::1");
    }
}
