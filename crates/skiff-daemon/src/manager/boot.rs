//! One boot of a daemon VM, in the order of the road: prepare the artifacts
//! (guest image, drives, TAP), [`resolve`] the plan (pure), launch it
//! through the backend, put it under its limits and its monitor, wait for
//! the agent, start the service. Every VM takes this road: spec files,
//! pools and `skiff run`.

use crate::image::{self, KernelChoice};
use crate::manager::{error_chain, kill_processes, Manager};
use crate::paths;
use crate::resolve::{resolve, Artifacts, Host};
use crate::store::VmRecord;
use skiff_proto::{ExecRequest, Message};
use skiff_vmm::{HostKvm, LaunchOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

impl Manager {
    pub(super) async fn boot(
        self: &Arc<Self>,
        rec: &VmRecord,
        timeout: Duration,
    ) -> Result<(), String> {
        let spec = &rec.spec;
        let choice = KernelChoice {
            kernel: spec.kernel.as_ref().and_then(|k| k.path.clone()),
            modules: spec.kernel.as_ref().and_then(|k| k.modules.clone()),
        };
        let guest = tokio::task::spawn_blocking(move || image::prepare(&choice, true))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{e:#}"))?;
        let decision =
            skiff_vmm::decide(crate::resolve::accel_choice(spec.accel), &HostKvm::probe());
        let vm_dir = self.paths.vm_dir(&rec.name);
        std::fs::create_dir_all(&vm_dir)
            .map_err(|e| format!("cannot create {}: {e}", vm_dir.display()))?;
        crate::drives::check_sources(spec)?;
        let image_root = crate::drives::image_root(spec)?;
        let boot_drives = crate::drives::prepare(self.host.as_ref(), &self.paths, rec, &vm_dir)
            .map_err(|e| format!("{e:#}"))?;
        // The secrets image goes away as soon as this boot no longer needs
        // the file: QEMU keeps it open, so it lives exactly as long as the VM.
        let _secrets = SecretsImage(boot_drives.secrets_image.clone());
        let host = Host::here(
            &guest,
            decision.accel,
            // A fresh directory per boot: the monitor of a previous boot may
            // still be cleaning up its own directory.
            self.paths.runtime_dir.join("vms").join(format!(
                "{}-{}",
                rec.id,
                &paths::new_vm_id()[..6]
            )),
            vm_dir.join("console.log"),
            crate::support::qemu_user(),
        );
        let artifacts = Artifacts {
            drives: boot_drives.drives,
            tap: self.prepare_tap(rec).await?,
            image_root,
        };
        let plan = resolve(spec, &rec.id, &host, artifacts, self.backend.as_ref())
            .map_err(|e| error_chain(&e))?;
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
        let mut vm = skiff_vmm::launch(&plan.launch, &opts)
            .await
            .map_err(|e| error_chain(&e))?;
        let (qemu, vsock) = (vm.qemu.process, vm.vsock.process);
        if let Err(e) = self.limit(rec, &plan.limits, &[qemu.pid, vsock.pid]) {
            vm.kill().await;
            return Err(e);
        }
        let run_dir = plan.launch.run_dir.to_string_lossy().into_owned();
        if let Err(e) = self.store.set_processes(&rec.name, qemu, vsock, &run_dir) {
            vm.kill().await;
            return Err(error_chain(&e));
        }
        self.spawn_monitor(
            rec.name.clone(),
            qemu,
            vsock,
            vm.qemu.child.take(),
            vm.vsock.child.take(),
            plan.launch.run_dir.clone(),
        );
        let mut conn = match vm.wait_ready(timeout).await {
            Ok(conn) => conn,
            Err(e) => {
                kill_processes(qemu, vsock);
                return Err(format!(
                    "{}\n(all of it: `skiff logs {}`)",
                    error_chain(&e),
                    rec.name
                ));
            }
        };
        if !conn.hello.problems.is_empty() {
            kill_processes(qemu, vsock);
            return Err(format!(
                "the guest could not be set up: {}",
                conn.hello.problems.join("; ")
            ));
        }
        let Some(argv) = &spec.command else {
            return Ok(());
        };
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
        let failed = match tokio::time::timeout(Duration::from_secs(30), conn.reader.recv()).await {
            Ok(Ok(Some(Message::Started(_)))) => return Ok(()),
            Ok(Ok(Some(Message::Error(m)))) => format!("the service could not start: {m}"),
            Ok(Ok(Some(Message::Exited(s)))) => format!(
                "the service could not start (exit status {})",
                s.shell_code()
            ),
            other => format!("no answer from the agent when starting the service: {other:?}"),
        };
        kill_processes(qemu, vsock);
        Err(failed)
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
