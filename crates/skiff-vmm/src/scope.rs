//! Under systemd, a VM's processes live in a transient scope of their own
//! (`skiff-vm-ID.scope`), not in the daemon's cgroup: systemd owns the
//! cgroup tree there, a service's cgroup is killed with the service, and
//! VMs must outlive a restart of the daemon. The scope carries the VM's
//! limits as unit properties (`MemoryMax`, `CPUQuotaPerSecUSec`).
//!
//! The daemon asks systemd over D-Bus (`StartTransientUnit`, then
//! `AttachProcessesToUnit` for processes that come later) with `busctl`,
//! which ships with systemd. The call is built as data ([`BusCall`]) and
//! tested as such; [`run`] carries it out.

use crate::cgroup::Limits;
use std::path::Path;
use std::process::Command;

/// The system bus. (systemd's private socket, /run/systemd/private, is
/// no bus: busctl refuses it with "Invalid request descriptor".)
pub const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("systemd is the init system but no D-Bus system bus answers at {SYSTEM_BUS}, and the VM's scope is asked for over it; install dbus (or dbus-broker)")]
    NoBus,
    #[error("cannot run busctl (part of systemd) to reach systemd")]
    Spawn(#[source] std::io::Error),
    #[error("systemd refused {what} for {unit}: {message}")]
    Refused {
        what: &'static str,
        unit: String,
        message: String,
    },
}

/// Whether VMs should go into scopes: systemd is the init system
/// (sd_booted(3): `/run/systemd/system` exists) and this process is root,
/// who may create system units.
pub fn systemd_manages_cgroups(run_systemd_system: &Path, euid_is_root: bool) -> bool {
    euid_is_root && run_systemd_system.is_dir()
}

/// Whether the system bus the scopes are asked for over is there.
pub fn bus_present() -> bool {
    Path::new(SYSTEM_BUS).exists()
}

/// The scope of one boot of the VM whose cgroup is named `cgroup`
/// (`vm-ID`): a name per boot (`tag`), since systemd lets an emptied scope
/// go in its own time and the next boot must not wait for that.
pub fn unit_name(cgroup: &str, tag: u64) -> String {
    format!("skiff-{cgroup}-{tag}.scope")
}

/// A `busctl` call as data: its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusCall {
    pub args: Vec<String>,
}

const MANAGER: [&str; 3] = [
    "org.freedesktop.systemd1",
    "/org/freedesktop/systemd1",
    "org.freedesktop.systemd1.Manager",
];

fn base(bus: &Path, method: &str, signature: &str) -> Vec<String> {
    let mut args = vec![
        format!("--address=unix:path={}", bus.display()),
        "--quiet".into(),
        // A bus that does not answer must not hold a boot for ever.
        "--timeout=10".into(),
        "call".into(),
    ];
    args.extend(MANAGER.iter().map(|s| s.to_string()));
    args.push(method.into());
    args.push(signature.into());
    args
}

/// Start the scope `unit` holding `pids`, with `limits`.
pub fn start_call(
    bus: &Path,
    unit: &str,
    description: &str,
    pids: &[i32],
    limits: &Limits,
) -> BusCall {
    let mut args = base(bus, "StartTransientUnit", "ssa(sv)a(sa(sv))");
    args.push(unit.into());
    // Fail rather than replace: a unit of that name is another VM's.
    args.push("fail".into());
    let per_second = limits.cpu_quota_us * 1_000_000 / limits.cpu_period_us.max(1);
    let properties: Vec<[String; 3]> = vec![
        ["Description".into(), "s".into(), description.into()],
        [
            "MemoryMax".into(),
            "t".into(),
            limits.memory_bytes.to_string(),
        ],
        // No swap: the limit is the limit.
        ["MemorySwapMax".into(), "t".into(), "0".into()],
        [
            "CPUQuotaPerSecUSec".into(),
            "t".into(),
            per_second.to_string(),
        ],
        // A VM that was killed leaves a failed scope behind; collected at
        // once, so that the VM's next boot can make its scope again.
        [
            "CollectMode".into(),
            "s".into(),
            "inactive-or-failed".into(),
        ],
    ];
    args.push((properties.len() + 1).to_string());
    for p in properties {
        args.extend(p);
    }
    args.extend(["PIDs".into(), "au".into(), pids.len().to_string()]);
    args.extend(pids.iter().map(|p| p.to_string()));
    // No auxiliary units.
    args.push("0".into());
    BusCall { args }
}

/// Move more processes into the existing scope `unit`.
pub fn attach_call(bus: &Path, unit: &str, pids: &[i32]) -> BusCall {
    let mut args = base(bus, "AttachProcessesToUnit", "ssau");
    args.push(unit.into());
    // The scope's own cgroup, not a subgroup of it.
    args.push(String::new());
    args.push(pids.len().to_string());
    args.extend(pids.iter().map(|p| p.to_string()));
    BusCall { args }
}

/// Carry out `call`; `what` and `unit` name it in the error.
pub fn run(call: &BusCall, what: &'static str, unit: &str) -> Result<(), ScopeError> {
    if !Path::new(SYSTEM_BUS).exists() {
        return Err(ScopeError::NoBus);
    }
    let out = Command::new("busctl")
        .args(&call.args)
        .output()
        .map_err(ScopeError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    let message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Err(ScopeError::Refused {
        what,
        unit: unit.to_owned(),
        message: if message.is_empty() {
            format!("busctl exited with {}", out.status)
        } else {
            message
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_is_asked_for_with_the_vms_processes_and_limits() {
        let call = start_call(
            Path::new(SYSTEM_BUS),
            &unit_name("vm-ab12", 7),
            "skiff VM web",
            &[10, 11],
            &Limits::for_vm(128, 1),
        );
        let line = call.args.join(" ");
        assert_eq!(
            line,
            "--address=unix:path=/run/dbus/system_bus_socket --quiet --timeout=10 call \
             org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager \
             StartTransientUnit ssa(sv)a(sa(sv)) skiff-vm-ab12-7.scope fail 6 Description s skiff VM web \
             MemoryMax t 402653184 MemorySwapMax t 0 CPUQuotaPerSecUSec t 2000000 \
             CollectMode s inactive-or-failed PIDs au 2 10 11 0"
        );
        // The description is one argument, spaces and all.
        assert!(call.args.contains(&"skiff VM web".to_owned()));
    }

    #[test]
    fn later_processes_join_the_scope() {
        let call = attach_call(Path::new(SYSTEM_BUS), "skiff-vm-x.scope", &[42]);
        assert_eq!(
            &call.args[7..],
            [
                "AttachProcessesToUnit",
                "ssau",
                "skiff-vm-x.scope",
                "",
                "1",
                "42"
            ]
        );
    }

    #[test]
    fn only_root_under_systemd_uses_scopes() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(systemd_manages_cgroups(dir.path(), true));
        assert!(!systemd_manages_cgroups(dir.path(), false));
        assert!(!systemd_manages_cgroups(&dir.path().join("absent"), true));
    }
}
