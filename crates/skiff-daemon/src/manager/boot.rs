//! One boot of a daemon VM, in the order of the road: prepare the artifacts
//! (guest image, drives, TAP), [`resolve`] the plan (pure), launch it
//! through the backend, put it under its limits and its monitor, wait for
//! the agent, start the service. Every VM takes this road: spec files,
//! pools and `skiff run`.

use crate::image::{self, KernelChoice};
use crate::manager::{kill_processes, Manager};
use crate::paths;
use crate::resolve::{resolve, Artifacts, Host};
use crate::store::VmRecord;
use skiff_proto::{ExecRequest, Message};
use skiff_vmm::{HostKvm, LaunchOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a VM did not boot. Each step's error is the source; the messages
/// name the step only, so that the chain reads once.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot prepare the guest image")]
    Image(#[from] crate::image::ImageError),
    #[error("the image preparation task failed")]
    ImageTask(#[source] tokio::task::JoinError),
    #[error("cannot create {}", path.display())]
    VmDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] crate::drives::MissingSource),
    #[error(transparent)]
    ShareOwner(#[from] crate::drives::ShareOwnerError),
    #[error(transparent)]
    NoImage(#[from] crate::drives::NoImage),
    #[error("cannot find the image cache")]
    Cache(#[source] crate::paths::PathError),
    #[error("cannot prepare the drives")]
    Drives(#[source] crate::drives::DriveError),
    #[error("cannot prepare the root disk")]
    RootDisk(#[from] crate::rootdisk::RootDiskError),
    #[error(transparent)]
    Tap(#[from] super::networks::TapError),
    #[error(transparent)]
    Plan(#[from] crate::resolve::ResolveError),
    #[error(transparent)]
    Port(#[from] skiff_vmm::usernet::PortInUse),
    #[error(transparent)]
    Forward(#[from] super::forward::ForwardError),
    #[error(transparent)]
    Launch(#[from] skiff_vmm::LaunchError),
    #[error(transparent)]
    QemuUser(#[from] crate::support::UnknownQemuUser),
    #[error(transparent)]
    Limits(#[from] crate::hostops::HostError),
    #[error("cannot record the VM's processes")]
    Store(#[from] crate::store::StoreError),
    #[error("the VM did not come up (its whole console: `skiff logs {vm}`)")]
    NotReady {
        vm: String,
        #[source]
        source: skiff_vmm::LaunchError,
    },
    /// What the guest said it could not set up (its own words).
    #[error("the guest could not be set up: {}", problems.join("; "))]
    GuestSetup { problems: Vec<String> },
    #[error("cannot restore the snapshot")]
    Restore(#[source] skiff_vmm::snapshot::SnapshotError),
    #[error("the restored guest could not take on its new identity: {0}")]
    Renew(String),
    #[error("cannot send the service to the agent")]
    Agent(#[from] skiff_vmm::AgentError),
    #[error("the service could not start: {0}")]
    ServiceRefused(String),
    #[error("the service could not start (exit status {0})")]
    ServiceExited(i32),
    #[error("no answer from the agent when starting the service: {0}")]
    ServiceSilent(String),
}

impl Manager {
    pub(super) async fn boot(
        self: &Arc<Self>,
        rec: &VmRecord,
        timeout: Duration,
    ) -> Result<(), BootError> {
        let spec = &rec.spec;
        crate::drives::check_sources(spec)?;
        let mut modules_dir = None;
        let boot_files = match (
            spec.own_initrd(),
            spec.kernel.as_ref().and_then(|k| k.path.clone()),
        ) {
            // The guest's own kernel and initrd, used as they are.
            (Some(initrd), Some(kernel)) => (kernel, initrd.to_owned()),
            _ => {
                let choice = KernelChoice {
                    kernel: spec.kernel.as_ref().and_then(|k| k.path.clone()),
                    modules: spec.kernel.as_ref().and_then(|k| k.modules.clone()),
                };
                let guest = tokio::task::spawn_blocking(move || image::prepare(&choice, true))
                    .await
                    .map_err(BootError::ImageTask)??;
                modules_dir = guest.kernel.modules_dir;
                (guest.kernel.image, guest.initrd)
            }
        };
        let decision = skiff_vmm::decide(spec.accel, &HostKvm::probe());
        let vm_dir = self.paths.vm_dir(&rec.name);
        std::fs::create_dir_all(&vm_dir).map_err(|source| BootError::VmDir {
            path: vm_dir.clone(),
            source,
        })?;
        // Started from a snapshot: this boot restores it instead.
        let restoring = super::snapshots::pending_restore(&vm_dir);
        let share_owners = crate::drives::share_owners(spec)?;
        let image_root = match &spec.image {
            None => None,
            Some(_) => {
                let cache = paths::cache_dir().map_err(BootError::Cache)?;
                crate::drives::image_root(spec, &cache)?
            }
        };
        let root_disk = match &spec.disk {
            None => None,
            Some(disk) => {
                let cache = paths::cache_dir().map_err(BootError::Cache)?;
                let (disk, host, dir) = (disk.clone(), self.host.clone(), vm_dir.clone());
                // Building an image's disk the first time takes a while.
                let prepared = tokio::task::spawn_blocking(move || {
                    let (base, kind) = crate::rootdisk::base(&disk, &cache)?;
                    crate::rootdisk::prepare(host.as_ref(), &disk, &base, kind, &dir)
                })
                .await
                .map_err(BootError::ImageTask)??;
                Some(prepared)
            }
        };
        let mut boot_drives = crate::drives::prepare(self.host.as_ref(), &self.paths, rec, &vm_dir)
            .map_err(BootError::Drives)?;
        // The secrets image goes away as soon as this boot no longer needs
        // the file: QEMU keeps it open, so it lives exactly as long as the VM.
        let _secrets = SecretsImage(boot_drives.secrets_image.clone());
        if let Some(restore) = &restoring {
            // The guest has the snapshot's config drive mounted.
            let drive = vm_dir.join("config.ext4");
            std::fs::copy(&restore.config_drive, &drive).map_err(|source| BootError::VmDir {
                path: drive,
                source,
            })?;
        }
        // The guest's own init runs skiff's kernel: its modules come along.
        if let (skiff_spec::InitSpec::System { .. }, Some(dir)) = (&spec.init, &modules_dir) {
            let (host, dir) = (self.host.clone(), dir.clone());
            let cache = paths::cache_dir()
                .map_err(BootError::Cache)?
                .join("modules");
            let drive = tokio::task::spawn_blocking(move || {
                crate::modules_drive::ensure(host.as_ref(), &dir, &cache)
            })
            .await
            .map_err(BootError::ImageTask)?
            .map_err(BootError::Drives)?;
            boot_drives.drives.push(drive);
        }
        let host = Host::here(
            boot_files,
            decision.accel,
            // A fresh directory per boot: the monitor of a previous boot may
            // still be cleaning up its own directory.
            self.paths.runtime_dir.join("vms").join(format!(
                "{}-{}",
                rec.id,
                &paths::new_vm_id()[..6]
            )),
            vm_dir.join("console.log"),
            crate::support::qemu_user()?,
        );
        let artifacts = Artifacts {
            drives: boot_drives.drives,
            tap: self.prepare_tap(rec).await?,
            image_root,
            root_disk,
            share_owners,
        };
        let mut plan = resolve(spec, &rec.id, &host, artifacts, self.backend.as_ref())?;
        // Resumes start QEMU as a boot does; only a restore waits for a stream.
        let resumable_qemu = plan.launch.qemu.clone();
        if restoring.is_some() {
            let incoming = skiff_vmm::snapshot::INCOMING_ARGS.map(String::from);
            plan.launch.qemu.args.extend(incoming);
        }
        if let Some(net) = &plan.config.net {
            net.check_host_ports()?;
        }
        if plan.config.tap.is_some() {
            self.start_forwards(rec)?;
        }
        let opts = LaunchOptions {
            log_dir: vm_dir.clone(),
            tied: false,
        };
        let mut vm = skiff_vmm::launch(&plan.launch, &opts).await?;
        let (qemu, vsock) = (vm.qemu.process, vm.vsock.process);
        // Every helper of the VM shares its limits: the share servers too.
        let mut pids = vec![qemu.pid, vsock.pid];
        pids.extend(vm.virtiofsd.iter().map(|h| h.process.pid));
        if let Err(e) = self.limit(rec, &plan.limits, &pids) {
            vm.kill().await;
            return Err(e.into());
        }
        if matches!(plan.config.transport, skiff_vmm::Transport::Serial { .. }) {
            let kept = super::pause::keep_qemu_plan(&plan.launch.run_dir, &resumable_qemu);
            if let Err(e) = kept {
                tracing::warn!(vm = %rec.name, error = %e, "cannot keep the QEMU command; the VM cannot be resumed");
            }
        }
        let run_dir = plan.launch.run_dir.to_string_lossy().into_owned();
        if let Err(e) = self.store.set_processes(&rec.name, qemu, vsock, &run_dir) {
            vm.kill().await;
            return Err(e.into());
        }
        self.spawn_monitor(
            rec.name.clone(),
            qemu,
            vsock,
            vm.qemu.child.take(),
            vm.vsock.child.take(),
            plan.launch.run_dir.clone(),
        );
        if let Some(restore) = &restoring {
            if let Err(e) = self.restore_started(rec, &plan, restore, qemu).await {
                kill_processes(qemu, vsock);
                return Err(e);
            }
            // Once: its next boots are cold ones.
            restore.discard();
            return Ok(());
        }
        let waited = match plan.config.init.has_agent() {
            true => vm.wait_ready(timeout).await.map(Some),
            false => vm
                .wait_probe(plan.ready.as_ref(), timeout)
                .await
                .map(|()| None),
        };
        let conn = match waited {
            Ok(conn) => conn,
            Err(source) => {
                kill_processes(qemu, vsock);
                return Err(BootError::NotReady {
                    vm: rec.name.clone(),
                    source,
                });
            }
        };
        // A sandboxed virtiofsd forks its worker after it was moved: now
        // that the guest is up, the workers join the VM's cgroup too.
        let workers: Vec<i32> = vm
            .virtiofsd
            .iter()
            .flat_map(|h| descendants(h.process.pid))
            .collect();
        if !workers.is_empty() {
            if let Err(e) = self.limit(rec, &plan.limits, &workers) {
                tracing::warn!(vm = %rec.name, error = %e, "cannot move the share servers' workers into the VM's cgroup");
            }
        }
        // Recorded, so that whoever stops the VM (this daemon or a later
        // one) ends them too.
        let helpers: Vec<skiff_vmm::ProcessRef> = vm
            .virtiofsd
            .iter()
            .map(|h| h.process)
            .chain(
                workers
                    .iter()
                    .filter_map(|pid| skiff_vmm::ProcessRef::of(*pid)),
            )
            .collect();
        if let Err(e) = self.store.add_helpers(&rec.name, &helpers) {
            tracing::warn!(vm = %rec.name, error = %e, "cannot record the share servers");
        }
        // A guest without an agent is up: its services are its own.
        let Some(mut conn) = conn else {
            return Ok(());
        };
        if !conn.hello.problems.is_empty() {
            kill_processes(qemu, vsock);
            return Err(BootError::GuestSetup {
                problems: conn.hello.problems.clone(),
            });
        }
        let Some((req, from_image)) = self.service_request(rec) else {
            return Ok(());
        };
        if from_image {
            tracing::info!(vm = %rec.name, argv = ?req.argv, "the service is the image's Entrypoint and Cmd");
        }
        conn.writer.send(&Message::Exec(req)).await?;
        let failed = match tokio::time::timeout(Duration::from_secs(30), conn.reader.recv()).await {
            Ok(Ok(Some(Message::Started(_)))) => return Ok(()),
            Ok(Ok(Some(Message::Error(m)))) => BootError::ServiceRefused(m),
            Ok(Ok(Some(Message::Exited(s)))) => BootError::ServiceExited(s.shell_code()),
            Ok(Ok(Some(other))) => BootError::ServiceSilent(format!("a {} message", other.name())),
            Ok(Ok(None)) => BootError::ServiceSilent("it closed the connection".into()),
            Ok(Err(e)) => BootError::Agent(e),
            Err(_) => BootError::ServiceSilent("nothing within 30 s".into()),
        };
        kill_processes(qemu, vsock);
        Err(failed)
    }
}

impl Manager {
    /// The service a VM runs after boot: its spec's `command`, else (but in
    /// a pool's sandboxes, which wait for commands) its OCI image's
    /// Entrypoint and Cmd, as `docker run IMAGE` does. True: from the image.
    fn service_request(&self, rec: &VmRecord) -> Option<(ExecRequest, bool)> {
        let spec = &rec.spec;
        let image = crate::image::container_config(spec);
        let in_pool = matches!(self.store.sandbox(&rec.name), Ok(Some(_)));
        let (argv, from_image) = match (&spec.command, &image) {
            (Some(argv), _) => (argv.clone(), false),
            (None, Some(config)) if !in_pool => (config.argv(&[]), true),
            (None, _) => return None,
        };
        if argv.is_empty() {
            return None;
        }
        let setting = crate::image::command_setting(image.as_ref(), &spec.env, Default::default());
        let req = ExecRequest {
            argv,
            env: setting.env,
            workdir: setting.workdir,
            stdin: false,
            service: true,
            tty: None,
            user: setting.user,
            report_pid: false,
        };
        Some((req, from_image))
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

/// The processes below `pid` (children, theirs, and so on), from /proc.
fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !found.contains(&child) && found.len() < 64 {
                    found.push(child);
                    todo.push(child);
                }
            }
        }
    }
    found
}
