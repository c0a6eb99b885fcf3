//! Backends: how a VM's config becomes the processes that run it, and what
//! the hypervisor's exit status means. Launching, stopping and adopting are
//! the same for every backend (processes with a vsock Unix socket that
//! speaks `CONNECT <port>`), so they live in [`crate::launch`] and the
//! daemon; a backend only decides the processes.
//!
//! QEMU's `microvm` is the one every real VM uses. The fake backend runs
//! `skiff-fake-vm`, a small host program that speaks the agent protocol, so
//! the daemon's lifecycle, restart policies, adoption and pools can be
//! tested in seconds without a VM. Firecracker and Cloud Hypervisor need
//! hardware KVM and would plug in here (docs/architecture.md says what each
//! needs).

use crate::plan::{guest_exit, GuestExit, LaunchPlan, PlanError, ProcessPlan, VmConfig};
use std::path::PathBuf;

/// Which backend a daemon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    Qemu,
    /// The test double: this program plays both the vsock backend and the
    /// guest.
    Fake {
        program: PathBuf,
    },
}

/// A hypervisor behind skiff's launch path.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// The processes that run `cfg` (pure: no I/O).
    fn plan(&self, cfg: &VmConfig) -> Result<LaunchPlan, PlanError>;
    /// What the hypervisor's exit code says about the guest (None: killed
    /// by a signal).
    fn guest_exit(&self, code: Option<i32>) -> GuestExit {
        guest_exit(code)
    }
}

/// The backend `kind` names.
pub fn backend(kind: BackendKind) -> Box<dyn Backend> {
    match kind {
        BackendKind::Qemu => Box::new(Qemu),
        BackendKind::Fake { program } => Box::new(Fake { program }),
    }
}

/// QEMU's `microvm` machine with a vhost-user vsock backend.
pub struct Qemu;

impl Backend for Qemu {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn plan(&self, cfg: &VmConfig) -> Result<LaunchPlan, PlanError> {
        crate::plan::plan(cfg)
    }
}

/// `skiff-fake-vm`: the same sockets and exit codes as a QEMU VM, no guest.
pub struct Fake {
    pub program: PathBuf,
}

impl Backend for Fake {
    fn kind(&self) -> BackendKind {
        BackendKind::Fake {
            program: self.program.clone(),
        }
    }

    fn plan(&self, cfg: &VmConfig) -> Result<LaunchPlan, PlanError> {
        // The same checks and socket layout as QEMU's plan; only the
        // programs differ.
        let real = crate::plan::plan(cfg)?;
        let arg = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let mut guest = vec![
            "guest".to_owned(),
            "--uds".into(),
            arg(&real.vsock_socket),
            "--ready".into(),
            arg(&real.ready_socket),
            "--console".into(),
            arg(&real.console_log),
            "--cmdline".into(),
            crate::plan::kernel_cmdline(cfg),
        ];
        if let Some(user) = &cfg.run_as {
            guest.extend(["--runas".into(), user.clone()]);
        }
        if let Some(qmp) = &real.qmp_socket {
            guest.extend(["--qmp".into(), arg(qmp)]);
        }
        Ok(LaunchPlan {
            vsock_backend: ProcessPlan {
                program: self.program.clone(),
                args: vec!["vsock".into(), "--socket".into(), arg(&real.vhost_socket)],
                ..ProcessPlan::default()
            },
            qemu: ProcessPlan {
                program: self.program.clone(),
                args: guest,
                ..ProcessPlan::default()
            },
            virtiofsd: Vec::new(),
            ..real
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_keeps_the_sockets_of_the_real_plan_and_runs_itself() {
        let cfg = crate::plan::tests::cfg();
        let real = Qemu.plan(&cfg).expect("plan");
        let fake = backend(BackendKind::Fake {
            program: "/bin/fake".into(),
        })
        .plan(&cfg)
        .expect("plan");
        assert_eq!(fake.ready_socket, real.ready_socket);
        assert_eq!(fake.vsock_socket, real.vsock_socket);
        assert_eq!(fake.qemu.program, PathBuf::from("/bin/fake"));
        assert_eq!(
            fake.vsock_backend.args,
            ["vsock", "--socket", "/run/skiff/vm1/vhost-vsock.sock"]
        );
        let at = |flag: &str| {
            let i = fake.qemu.args.iter().position(|a| a == flag).expect(flag);
            fake.qemu.args[i + 1].clone()
        };
        assert_eq!(at("--uds"), "/run/skiff/vm1/vsock.sock");
        assert_eq!(at("--console"), "/run/skiff/vm1/console.log");
        assert!(at("--cmdline").starts_with("console=ttyS0"));
    }
}
