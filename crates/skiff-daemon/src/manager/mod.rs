//! The daemon's core: VM lifecycle on top of the store, the backend and the
//! host operations. Its parts are the submodules (boot, monitor, networks,
//! pools, forwards, limits, health checks); it depends only on the layers
//! below it (store, hostops, drives, resolve, metrics, background), and
//! HTTP handlers (the http module) only parse requests and call it.

pub mod boot;
mod forward;
mod health;
mod http_check;
mod limits;
mod monitor;
pub mod networks;
pub mod pools;

use crate::paths;
use crate::store::{Event, Store, VmRecord, VmState};
pub use skiff_api::ApplyChange;
use skiff_proto::Message;
use skiff_spec::VmSpec;
use skiff_vmm::{AgentConn, Backend, ProcessRef};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a VM may take to boot before `start` gives up.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `stop` waits for a clean power-off before killing.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for a guest with its own init, which stops all its units and
/// unmounts its filesystems first (a few seconds under TCG).
pub const SYSTEM_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest stop timeout a request may ask for.
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a clean stop of `spec`'s VM may take by default.
/// The QMP socket of a boot without skiff's agent (see
/// [`skiff_vmm::LaunchPlan::qmp_socket`]); none for an agent's boot.
fn booted_without_agent(run_dir: &str) -> Option<std::path::PathBuf> {
    let qmp = Path::new(run_dir).join("qmp.sock");
    qmp.exists().then_some(qmp)
}

pub fn stop_timeout(spec: &VmSpec) -> Duration {
    match spec.init {
        // A guest with its own initrd runs its own init (systemd, most
        // likely), whose shutdown takes as long.
        skiff_spec::InitSpec::Agent if spec.has_agent() => DEFAULT_STOP_TIMEOUT,
        _ => SYSTEM_STOP_TIMEOUT,
    }
}

mod errors;
pub mod pause;
mod sleep;
pub mod snapshots;
pub use errors::{Cause, Conflict, Invalid, ManagerError, Missing};

pub use crate::support::error_chain;

pub use crate::paths::DaemonPaths;

pub struct Manager {
    pub store: Store,
    pub paths: DaemonPaths,
    /// The hypervisor every VM of this daemon runs on.
    pub(super) backend: Box<dyn Backend>,
    /// One lock per VM name: lifecycle operations on one VM never overlap.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Port forwards of running VMs on managed networks, by VM name.
    pub(super) forwarders: Mutex<HashMap<String, crate::forward::Forwarder>>,
    /// Wakes the pool keeper (a sandbox was taken, a pool changed).
    pub(super) pool_wake: tokio::sync::Notify,
    /// Background commands, by id.
    pub(super) background: crate::background::Registry,
    /// Links, rules, cgroups and images on the host.
    pub(super) host: Arc<dyn crate::hostops::HostOps>,
    pub(super) metrics: crate::metrics::Metrics,
    pub(super) health: crate::manager::health::HealthMap,
    /// The proxy's routing table, rebuilt when the store has changed.
    pub(super) routes: crate::proxy::RouteTable,
    /// When each VM was last used (for `sleep_after`).
    pub(super) activity: Arc<crate::activity::Activity>,
    /// How long a boot may take, in milliseconds (`skiff daemon
    /// --boot-timeout`; [`BOOT_TIMEOUT`] by default).
    boot_timeout_ms: std::sync::atomic::AtomicU64,
}

pub(super) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Manager {
    pub fn new(
        store: Store,
        paths: DaemonPaths,
        backend: Box<dyn Backend>,
        host: Arc<dyn crate::hostops::HostOps>,
    ) -> Arc<Manager> {
        Arc::new(Manager {
            store,
            paths,
            backend,
            locks: Mutex::new(HashMap::new()),
            forwarders: Mutex::new(HashMap::new()),
            pool_wake: tokio::sync::Notify::new(),
            background: crate::background::Registry::default(),
            activity: Arc::default(),
            host,
            metrics: crate::metrics::Metrics::default(),
            health: crate::manager::health::HealthMap::default(),
            routes: crate::proxy::RouteTable::default(),
            boot_timeout_ms: std::sync::atomic::AtomicU64::new(BOOT_TIMEOUT.as_millis() as u64),
        })
    }

    /// Give every boot (start, restart, autostart, pools) this long.
    pub fn set_boot_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.boot_timeout_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn boot_timeout(&self) -> Duration {
        Duration::from_millis(
            self.boot_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The backend this daemon's VMs run on.
    pub fn backend_kind(&self) -> skiff_vmm::BackendKind {
        self.backend.kind()
    }

    fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(name.to_owned()).or_default().clone()
    }

    /// What a command in `name` runs with: the VM's OCI image config and
    /// spec's `env` fill what the request leaves out (see
    /// [`crate::image::command_setting`]).
    pub fn command_setting(
        &self,
        name: &str,
        request: crate::image::CommandSetting,
    ) -> crate::image::CommandSetting {
        let spec = self.store.get(name).ok().flatten().map(|rec| rec.spec);
        let image = spec.as_ref().and_then(crate::image::container_config);
        let spec_env = spec.map(|s| s.env).unwrap_or_default();
        crate::image::command_setting(image.as_ref(), &spec_env, request)
    }

    fn get(&self, name: &str) -> Result<VmRecord, ManagerError> {
        self.store
            .get(name)?
            .ok_or_else(|| ManagerError::NotFound(name.to_owned()))
    }

    pub fn list(&self) -> Result<Vec<VmRecord>, ManagerError> {
        Ok(self.store.list()?)
    }

    pub fn inspect(&self, name: &str) -> Result<VmRecord, ManagerError> {
        self.get(name)
    }

    pub fn create(&self, spec: &VmSpec) -> Result<VmRecord, ManagerError> {
        self.create_vm(spec, &paths::new_vm_id(), false)
    }

    /// Create a VM with the given id; an `ephemeral` one (`skiff run`) is
    /// removed when its command ends and by the next daemon if this one
    /// dies first.
    pub(super) fn create_vm(
        &self,
        spec: &VmSpec,
        id: &str,
        ephemeral: bool,
    ) -> Result<VmRecord, ManagerError> {
        skiff_spec::check_name(&spec.name).map_err(|source| Invalid::Name {
            field: "name",
            source,
        })?;
        crate::resolve::check_supported(spec).map_err(Invalid::Unsupported)?;
        self.check_http(spec)?;
        let vm_dir = self.paths.vm_dir(&spec.name);
        let rec = self.store.insert(id, spec, ephemeral)?;
        if let Err(e) = std::fs::create_dir_all(&vm_dir) {
            let _ = self.store.delete(&spec.name);
            return Err(ManagerError::internal(
                format!("create {}", vm_dir.display()),
                e,
            ));
        }
        if let Err(e) = self.sync_leases(spec) {
            let _ = self.release_vm(&spec.name);
            let _ = self.store.delete(&spec.name);
            let _ = std::fs::remove_dir_all(&vm_dir);
            return Err(e);
        }
        Ok(rec)
    }

    /// Boot a VM and wait until its agent is ready (and its service started).
    pub fn start(self: &Arc<Self>, name: &str) -> BoxFuture<Result<VmRecord, ManagerError>> {
        self.start_within(name, self.boot_timeout())
    }

    /// [`Manager::start`], with a limit on how long the guest may take.
    /// Dropping the future abandons the boot; `remove` then cleans up.
    pub fn start_within(
        self: &Arc<Self>,
        name: &str,
        timeout: Duration,
    ) -> BoxFuture<Result<VmRecord, ManagerError>> {
        let this = self.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let lock = this.lock_for(&name);
            let _guard = lock.lock().await;
            let rec = this.get(&name)?;
            if rec.state.after(Event::Start).is_err() {
                return Err(ManagerError::WrongState {
                    name,
                    action: "start",
                    state: rec.state.as_str(),
                });
            }
            this.store.transition(&name, Event::Start, "")?;
            let started = std::time::Instant::now();
            match this.boot(&rec, timeout).await {
                Ok(()) => {
                    this.store.transition(&name, Event::Booted, "")?;
                    this.activity.touch(&name);
                    let init = match (&rec.spec.init, rec.spec.has_agent()) {
                        (_, false) => "own",
                        (skiff_spec::InitSpec::System { .. }, true) => "system",
                        (skiff_spec::InitSpec::Agent, true) => "agent",
                    };
                    this.metrics.booted(init, started.elapsed());
                    tracing::info!(vm = %name, "running");
                    this.get(&name)
                }
                Err(source) => {
                    this.stop_forwards(&name);
                    this.remove_tap(&rec.id).await;
                    this.remove_cgroup(&rec).await;
                    // The monitor may have seen QEMU end first (Ended).
                    let reason = error_chain(&source);
                    tracing::warn!(vm = %name, %reason, "failed to start");
                    let note = format!("failed to start: {reason}");
                    if this
                        .store
                        .transition(&name, Event::BootFailed, &note)
                        .is_err()
                    {
                        this.store.set_note(&name, &note)?;
                    }
                    Err(ManagerError::StartFailed {
                        name,
                        source: Box::new(source),
                    })
                }
            }
        })
    }

    /// Power a VM off through its agent, then kill what is left.
    /// Stop a VM cleanly, killing it after `timeout` (None: the default
    /// for its kind of guest).
    pub async fn stop(
        self: &Arc<Self>,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<VmRecord, ManagerError> {
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        let rec = self.get(name)?;
        let timeout = timeout.unwrap_or_else(|| stop_timeout(&rec.spec));
        if rec.state.after(Event::Stop).is_err() {
            return Err(ManagerError::WrongState {
                name: name.to_owned(),
                action: "stop",
                state: rec.state.as_str(),
            });
        }
        self.store.transition(name, Event::Stop, "")?;
        self.halt(&rec, timeout).await;
        self.store
            .transition(name, Event::Halted, "stopped on request")?;
        tracing::info!(vm = %name, "stopped");
        self.get(name)
    }

    /// A stop a user asked for: [`Manager::stop`], then the removal of a
    /// `run -d --rm` VM. (A restart or an `apply` stops VMs too, and
    /// keeps them.)
    pub async fn stop_on_request(
        self: &Arc<Self>,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<VmRecord, ManagerError> {
        let stopped = self.stop(name, timeout).await?;
        if self.store.removes_when_ended(name)? {
            self.remove_ended(name).await;
        }
        Ok(stopped)
    }

    async fn halt(&self, rec: &VmRecord, timeout: Duration) {
        if let (Some(qemu), Some(run_dir)) = (rec.qemu, &rec.run_dir) {
            let sock = Path::new(run_dir).join("vsock.sock");
            // How this boot was made decides, not the spec (which `apply`
            // may have changed since): a guest without an agent has QMP.
            let qmp = booted_without_agent(run_dir);
            let mut pressed = true;
            match (qemu.is_alive(), qmp) {
                (false, _) => {}
                (true, None) => {
                    if let Ok(mut conn) =
                        AgentConn::connect(&sock, skiff_proto::AGENT_PORT, Duration::from_secs(2))
                            .await
                    {
                        let _ = conn.writer.send(&Message::Shutdown).await;
                    }
                }
                (true, Some(qmp)) => {
                    // The ACPI power button, which the guest's init turns
                    // into a clean shutdown (or ignores, and is killed).
                    if let Err(e) =
                        skiff_vmm::qmp::system_powerdown(&qmp, Duration::from_secs(2)).await
                    {
                        tracing::warn!(vm = %rec.name, error = %e, "cannot press the power button; killing the VM");
                        pressed = false;
                    }
                }
            }
            let timeout = if pressed { timeout } else { Duration::ZERO };
            // Reading /proc is cheap: poll often, so a VM that powers off
            // quickly is done with quickly (a `skiff run` waits for this).
            let deadline = Instant::now() + timeout;
            while qemu.is_alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if let (Some(q), Some(v)) = (rec.qemu, rec.vsock) {
            kill_processes(q, v);
            self.kill_helpers(&rec.name);
            // The TAP is busy until QEMU is really gone.
            let deadline = Instant::now() + Duration::from_secs(5);
            while q.is_alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if let Some(run_dir) = &rec.run_dir {
            let _ = std::fs::remove_dir_all(run_dir);
        }
        self.discard_snapshot(&rec.name);
        self.stop_forwards(&rec.name);
        self.remove_tap(&rec.id).await;
        self.remove_cgroup(rec).await;
        let _ = self.store.clear_processes(&rec.name);
    }

    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<VmRecord, ManagerError> {
        let rec = self.get(name)?;
        if rec.state.is_active() {
            self.stop(name, None).await?;
        }
        self.start(name).await
    }

    pub async fn remove(
        self: &Arc<Self>,
        name: &str,
        force: bool,
        volumes: bool,
    ) -> Result<(), ManagerError> {
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        let rec = self.get(name)?;
        if rec.state.is_active() {
            if !force {
                return Err(ManagerError::WrongState {
                    name: name.to_owned(),
                    action: "remove",
                    state: "running (stop it first, or use --force)",
                });
            }
            // Stopping already (a stop that was cut short) is fine too.
            let _ = self.store.transition(name, Event::Stop, "");
            self.halt(&rec, Duration::from_secs(1)).await;
        }
        self.store.delete(name)?;
        self.store.delete_sandbox(name)?;
        self.store.delete_e2b(name)?;
        self.background.forget_vm(name);
        self.metrics.forget(name);
        self.activity.forget(name);
        self.release_vm(name)?;
        let _ = std::fs::remove_dir_all(self.paths.vm_dir(name));
        if volumes {
            for v in &rec.spec.volumes {
                let _ = std::fs::remove_file(crate::drives::volume_path(&self.paths, &v.name));
            }
            let _ = std::fs::remove_file(crate::drives::data_path(&self.paths, name));
        }
        Ok(())
    }

    /// Open a connection to a running VM's agent (waking a VM that sleeps
    /// when idle). The VM counts as in use while the connection is open.
    pub async fn connect(self: &Arc<Self>, name: &str) -> Result<AgentConn, ManagerError> {
        let in_use = self.activity.begin(name);
        let rec = self.wake_on_demand(name).await?;
        let no_agent = match &rec.run_dir {
            Some(dir) => booted_without_agent(dir).is_some(),
            None => !rec.spec.has_agent(),
        };
        if no_agent {
            return Err(Conflict::NoAgent(name.to_owned()).into());
        }
        let (VmState::Running, Some(run_dir)) = (rec.state, &rec.run_dir) else {
            return Err(ManagerError::WrongState {
                name: name.to_owned(),
                action: "exec in",
                state: match rec.state {
                    VmState::Paused => "paused; resume it with `skiff resume`, or give it `sleep_after` in its spec so that it wakes on use",
                    other => other.as_str(),
                },
            });
        };
        let sock = Path::new(run_dir).join("vsock.sock");
        AgentConn::connect(&sock, skiff_proto::AGENT_PORT, Duration::from_secs(10))
            .await
            .map(|conn| conn.holding(in_use))
            .map_err(|source| ManagerError::Agent {
                name: name.to_owned(),
                source,
            })
    }

    /// Create or update each VM; restart the running ones whose spec changed
    /// and that allow it.
    pub async fn apply(
        self: &Arc<Self>,
        specs: Vec<VmSpec>,
    ) -> Result<Vec<ApplyChange>, ManagerError> {
        let mut changes = Vec::new();
        for spec in specs {
            let name = spec.name.clone();
            let Some(rec) = self.store.get(&name)? else {
                self.create(&spec)?;
                if spec.autostart {
                    self.start(&name).await?;
                }
                changes.push(ApplyChange {
                    name,
                    action: "created".into(),
                    changed: Vec::new(),
                });
                continue;
            };
            crate::resolve::check_supported(&spec).map_err(Invalid::Unsupported)?;
            self.check_http(&spec)?;
            let changed = changed_fields(&rec.spec, &spec);
            if changed.is_empty() {
                changes.push(ApplyChange {
                    name,
                    action: "unchanged".into(),
                    changed,
                });
                continue;
            }
            self.store.update_spec(&spec)?;
            if let Err(e) = self.sync_leases(&spec) {
                // Nothing half-applied: the old spec and its leases stay.
                let _ = self.store.update_spec(&rec.spec);
                let _ = self.sync_leases(&rec.spec);
                return Err(e);
            }
            let action = if rec.state.is_active() && spec.restart_if_changed {
                self.restart(&name).await?;
                "restarted"
            } else {
                "updated"
            };
            changes.push(ApplyChange {
                name,
                action: action.into(),
                changed,
            });
        }
        Ok(changes)
    }
}

impl Manager {
    /// End a VM's recorded helpers (its share servers) that still run.
    pub(super) fn kill_helpers(&self, name: &str) {
        for h in self.store.helpers(name).unwrap_or_default() {
            h.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

pub(super) fn kill_processes(qemu: ProcessRef, vsock: ProcessRef) {
    qemu.signal(nix::sys::signal::Signal::SIGKILL);
    vsock.signal(nix::sys::signal::Signal::SIGKILL);
}

/// Top-level fields whose values differ between two specs.
pub fn changed_fields(old: &VmSpec, new: &VmSpec) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return vec!["spec".into()];
    };
    let mut keys: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| a.get(k) != b.get(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_fields_names_exactly_what_differs() {
        let a = VmSpec::with_defaults("web");
        let mut b = a.clone();
        assert!(changed_fields(&a, &b).is_empty());
        b.memory_mib = 512;
        b.autostart = true;
        assert_eq!(changed_fields(&a, &b), ["autostart", "memory_mib"]);
    }
}

#[cfg(test)]
#[path = "hostops_tests.rs"]
mod hostops_tests;
