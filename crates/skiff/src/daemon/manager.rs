//! The daemon's core: VM lifecycle on top of the store and the backend.
//! HTTP handlers only parse requests and call these methods.

use super::store::{Store, StoreError, VmRecord, VmState};
use crate::image::{self, KernelChoice};
use crate::paths;
use skiff_proto::{ExecRequest, Message};
use skiff_spec::VmSpec;
use skiff_vmm::{AgentConn, HostKvm, ProcessRef, VmConfig};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a VM may take to boot before `start` gives up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `stop` waits for a clean power-off before killing.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong, typed so that the API can pick a status code.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no VM named {0:?}")]
    NotFound(String),
    /// Something else that does not exist (a pool, a network); the text
    /// says what.
    #[error("{0}")]
    Missing(String),
    #[error("a VM named {0:?} already exists")]
    Exists(String),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("cannot {action} {name:?}: it is {state}")]
    WrongState {
        name: String,
        action: &'static str,
        state: &'static str,
    },
    #[error("VM {name:?} failed to start: {reason}")]
    StartFailed { name: String, reason: String },
    #[error("cannot reach the agent of {name:?}: {reason}")]
    Agent { name: String, reason: String },
    /// The daemon lacks a privilege (a capability) for this.
    #[error("{0}")]
    Forbidden(String),
    /// Conflicts with what exists (a taken address, an overlapping subnet).
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ManagerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(n) => ManagerError::Exists(n),
            other => ManagerError::Internal(error_chain(&other)),
        }
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub struct DaemonPaths {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl DaemonPaths {
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("vms").join(name)
    }
}

/// What `apply` did to one VM.
#[derive(Debug, serde::Serialize)]
pub struct ApplyChange {
    pub name: String,
    /// created, updated, restarted, unchanged
    pub action: &'static str,
    /// Top-level spec fields that changed.
    pub changed: Vec<String>,
}

pub struct Manager {
    pub store: Store,
    pub paths: DaemonPaths,
    /// One lock per VM name: lifecycle operations on one VM never overlap.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Port forwards of running VMs on managed networks, by VM name.
    pub(super) forwarders: Mutex<HashMap<String, super::forward::Forwarder>>,
    /// Wakes the pool keeper (a sandbox was taken, a pool changed).
    pub(super) pool_wake: tokio::sync::Notify,
    /// Background commands, by id.
    pub(super) background: super::background::Registry,
    /// Where VMs get their host-side limits; None: no usable cgroups.
    pub(super) cgroups: Option<skiff_vmm::cgroup::Hierarchy>,
    pub(super) metrics: super::metrics::Metrics,
    pub(super) health: super::health::HealthMap,
}

pub(super) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Manager {
    pub fn new(store: Store, paths: DaemonPaths) -> Arc<Manager> {
        Arc::new(Manager {
            store,
            paths,
            locks: Mutex::new(HashMap::new()),
            forwarders: Mutex::new(HashMap::new()),
            pool_wake: tokio::sync::Notify::new(),
            background: super::background::Registry::default(),
            cgroups: skiff_vmm::cgroup::detect(),
            metrics: super::metrics::Metrics::default(),
            health: super::health::HealthMap::default(),
        })
    }

    fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(name.to_owned()).or_default().clone()
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
        skiff_spec::check_name(&spec.name)
            .map_err(|e| ManagerError::InvalidSpec(format!("name: {e}")))?;
        super::support::check_supported(spec)?;
        self.check_http(spec)?;
        let vm_dir = self.paths.vm_dir(&spec.name);
        let rec = self.store.insert(&paths::new_vm_id(), spec)?;
        if let Err(e) = std::fs::create_dir_all(&vm_dir) {
            let _ = self.store.delete(&spec.name);
            return Err(ManagerError::Internal(format!(
                "cannot create {}: {e}",
                vm_dir.display()
            )));
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
        let this = self.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let lock = this.lock_for(&name);
            let _guard = lock.lock().await;
            let rec = this.get(&name)?;
            if rec.state.is_active() {
                return Err(ManagerError::WrongState {
                    name,
                    action: "start",
                    state: rec.state.as_str(),
                });
            }
            this.store.set_state(&name, VmState::Starting, "")?;
            match this.boot(&rec).await {
                Ok(()) => {
                    this.store.set_state(&name, VmState::Running, "")?;
                    this.get(&name)
                }
                Err(reason) => {
                    this.stop_forwards(&name);
                    this.remove_tap(&rec.id).await;
                    this.remove_cgroup(&rec).await;
                    this.store.set_state(
                        &name,
                        VmState::Exited,
                        &format!("failed to start: {reason}"),
                    )?;
                    Err(ManagerError::StartFailed { name, reason })
                }
            }
        })
    }

    async fn boot(self: &Arc<Self>, rec: &VmRecord) -> Result<(), String> {
        let spec = &rec.spec;
        let choice = KernelChoice {
            kernel: spec.kernel.as_ref().and_then(|k| k.path.clone()),
            modules: spec.kernel.as_ref().and_then(|k| k.modules.clone()),
        };
        let guest = tokio::task::spawn_blocking(move || image::prepare(&choice, true))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{e:#}"))?;
        let accel = match spec.accel {
            skiff_spec::Accel::Auto => skiff_vmm::AccelChoice::Auto,
            skiff_spec::Accel::Kvm => skiff_vmm::AccelChoice::Kvm,
            skiff_spec::Accel::Tcg => skiff_vmm::AccelChoice::Tcg,
        };
        let decision = skiff_vmm::decide(accel, &HostKvm::probe());
        let vm_dir = self.paths.vm_dir(&rec.name);
        std::fs::create_dir_all(&vm_dir)
            .map_err(|e| format!("cannot create {}: {e}", vm_dir.display()))?;
        let boot_drives =
            super::drives::prepare(&self.paths, rec, &vm_dir).map_err(|e| format!("{e:#}"))?;
        // The secrets image goes away as soon as this boot no longer needs
        // the file: QEMU keeps it open, so it lives exactly as long as the VM.
        let _secrets = SecretsImage(boot_drives.secrets_image.clone());
        let drives = boot_drives.drives;
        let cfg = VmConfig {
            cpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: guest.kernel.image.clone(),
            initrd: guest.initrd.clone(),
            accel: decision.accel,
            extra_cmdline: spec
                .kernel
                .as_ref()
                .map(|k| k.params.clone())
                .unwrap_or_default(),
            // A fresh directory per boot: the monitor of a previous boot may
            // still be cleaning up its own directory.
            run_dir: self.paths.runtime_dir.join("vms").join(format!(
                "{}-{}",
                rec.id,
                &paths::new_vm_id()[..6]
            )),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            vsock_binary: paths::vsock_backend(),
            console_log: Some(vm_dir.join("console.log")),
            net: super::support::user_net(spec),
            tap: self.prepare_tap(rec).await?,
            vm_id: rec.id.clone(),
            drives,
            shares: super::drives::shares(spec)?,
            virtiofsd_binary: paths::helper("virtiofsd", "SKIFF_VIRTIOFSD"),
            rootfs: super::drives::rootfs_of(spec)?,
            run_as: super::support::qemu_user(),
        };
        let plan = skiff_vmm::plan(&cfg).map_err(|e| e.to_string())?;
        if let Some(net) = &cfg.net {
            net.check_host_ports()?;
        }
        if cfg.tap.is_some() {
            self.start_forwards(rec)?;
        }
        let mut vm = skiff_vmm::launch_detached(&plan, &vm_dir)
            .await
            .map_err(|e| error_chain(&e))?;
        if let Err(e) = self.limit(rec, &vm) {
            kill_processes(vm.qemu, vm.vsock);
            return Err(e);
        }
        let run_dir = plan.run_dir.to_string_lossy().into_owned();
        self.store
            .set_processes(&rec.name, vm.qemu, vm.vsock, &run_dir)
            .map_err(|e| error_chain(&e))?;
        let qemu_child = vm.qemu_child.take();
        let vsock_child = vm.vsock_child.take();
        self.spawn_monitor(
            rec.name.clone(),
            vm.qemu,
            vm.vsock,
            qemu_child,
            vsock_child,
            plan.run_dir.clone(),
        );

        // Wait for the agent, watching QEMU so that a dead VM fails fast.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let stream = loop {
            tokio::select! {
                accepted = vm.ready.accept() => break accepted.map_err(|e| e.to_string())?.0,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if !vm.qemu.is_alive() {
                        let qemu_log = std::fs::read_to_string(vm_dir.join("qemu.log")).unwrap_or_default();
                        let said = qemu_log.trim();
                        let said = if said.is_empty() { String::new() } else { format!(": {said}") };
                        return Err(format!("QEMU exited during boot{said}; see `skiff logs {}`", rec.name));
                    }
                    if Instant::now() > deadline {
                        kill_processes(vm.qemu, vm.vsock);
                        return Err(format!("the guest did not become ready within {BOOT_TIMEOUT:?}; see `skiff logs {}`", rec.name));
                    }
                }
            }
        };
        drop(vm.ready);
        let _ = std::fs::remove_file(&plan.ready_socket);
        let mut conn = AgentConn::handshake(stream, Duration::from_secs(10))
            .await
            .map_err(|e| error_chain(&e))?;
        if !conn.hello.problems.is_empty() {
            kill_processes(vm.qemu, vm.vsock);
            return Err(format!(
                "the guest could not be set up: {}",
                conn.hello.problems.join("; ")
            ));
        }
        if let Some(argv) = &spec.command {
            let req = ExecRequest {
                argv: argv.clone(),
                env: spec
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                workdir: None,
                stdin: false,
                service: true,
                tty: None,
                user: None,
            };
            conn.writer
                .send(&Message::Exec(req))
                .await
                .map_err(|e| error_chain(&e))?;
            match tokio::time::timeout(Duration::from_secs(30), conn.reader.recv()).await {
                Ok(Ok(Some(Message::Started(_)))) => {}
                Ok(Ok(Some(Message::Error(m)))) => {
                    kill_processes(vm.qemu, vm.vsock);
                    return Err(format!("the service could not start: {m}"));
                }
                Ok(Ok(Some(Message::Exited(s)))) => {
                    kill_processes(vm.qemu, vm.vsock);
                    return Err(format!(
                        "the service could not start (exit status {})",
                        s.shell_code()
                    ));
                }
                other => {
                    kill_processes(vm.qemu, vm.vsock);
                    return Err(format!(
                        "no answer from the agent when starting the service: {other:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Power a VM off through its agent, then kill what is left.
    pub async fn stop(
        self: &Arc<Self>,
        name: &str,
        timeout: Duration,
    ) -> Result<VmRecord, ManagerError> {
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        let rec = self.get(name)?;
        if !rec.state.is_active() {
            return Err(ManagerError::WrongState {
                name: name.to_owned(),
                action: "stop",
                state: rec.state.as_str(),
            });
        }
        self.store.set_state(name, VmState::Stopping, "")?;
        self.halt(&rec, timeout).await;
        self.store
            .set_state(name, VmState::Stopped, "stopped on request")?;
        self.get(name)
    }

    async fn halt(&self, rec: &VmRecord, timeout: Duration) {
        if let (Some(qemu), Some(run_dir)) = (rec.qemu, &rec.run_dir) {
            let sock = Path::new(run_dir).join("vsock.sock");
            if let Ok(mut conn) =
                AgentConn::connect(&sock, skiff_proto::AGENT_PORT, Duration::from_secs(2)).await
            {
                let _ = conn.writer.send(&Message::Shutdown).await;
            }
            let deadline = Instant::now() + timeout;
            while qemu.is_alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if let (Some(q), Some(v)) = (rec.qemu, rec.vsock) {
            kill_processes(q, v);
            // The TAP is busy until QEMU is really gone.
            let deadline = Instant::now() + Duration::from_secs(5);
            while q.is_alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(run_dir) = &rec.run_dir {
            let _ = std::fs::remove_dir_all(run_dir);
        }
        self.stop_forwards(&rec.name);
        self.remove_tap(&rec.id).await;
        self.remove_cgroup(rec).await;
        let _ = self.store.clear_processes(&rec.name);
    }

    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<VmRecord, ManagerError> {
        let rec = self.get(name)?;
        if rec.state.is_active() {
            self.stop(name, DEFAULT_STOP_TIMEOUT).await?;
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
            self.store.set_state(name, VmState::Stopping, "")?;
            self.halt(&rec, Duration::from_secs(1)).await;
        }
        self.store.delete(name)?;
        self.store.delete_sandbox(name)?;
        self.background.forget_vm(name);
        self.release_vm(name)?;
        let _ = std::fs::remove_dir_all(self.paths.vm_dir(name));
        if volumes {
            for v in &rec.spec.volumes {
                let _ = std::fs::remove_file(super::drives::volume_path(&self.paths, &v.name));
            }
            let _ = std::fs::remove_file(super::drives::data_path(&self.paths, name));
        }
        Ok(())
    }

    /// Open a connection to a running VM's agent.
    pub async fn connect(&self, name: &str) -> Result<AgentConn, ManagerError> {
        let rec = self.get(name)?;
        let (VmState::Running, Some(run_dir)) = (rec.state, &rec.run_dir) else {
            return Err(ManagerError::WrongState {
                name: name.to_owned(),
                action: "exec in",
                state: rec.state.as_str(),
            });
        };
        let sock = Path::new(run_dir).join("vsock.sock");
        AgentConn::connect(&sock, skiff_proto::AGENT_PORT, Duration::from_secs(10))
            .await
            .map_err(|e| ManagerError::Agent {
                name: name.to_owned(),
                reason: error_chain(&e),
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
                    action: "created",
                    changed: Vec::new(),
                });
                continue;
            };
            super::support::check_supported(&spec)?;
            self.check_http(&spec)?;
            let changed = changed_fields(&rec.spec, &spec);
            if changed.is_empty() {
                changes.push(ApplyChange {
                    name,
                    action: "unchanged",
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
                action,
                changed,
            });
        }
        Ok(changes)
    }
}

/// Deletes the in-memory secrets image when dropped.
struct SecretsImage(Option<PathBuf>);
impl Drop for SecretsImage {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
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
