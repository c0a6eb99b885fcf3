//! Guests with their own init (`skiff.init=system`): the agent hands PID 1
//! to the guest's `/sbin/init` (systemd) and comes back as its service.
//!
//! Before the hand-over, the agent (still PID 1, in the new root) puts a
//! copy of itself and a runtime unit under `/run` (a tmpfs it mounted; the
//! image on disk is never changed), then execs the init. systemd finds
//! `/run/systemd/system/skiff-agent.service`, wanted by multi-user.target,
//! and starts the agent, which waits until the spec's target is active and
//! only then tells the host it is ready.

use crate::log;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where the agent's copy lives in the running guest.
pub const AGENT_PATH: &str = "/run/skiff/skiff-agent";
const UNIT_DIR: &str = "/run/systemd/system";
const UNIT_NAME: &str = "skiff-agent.service";
const INIT: &str = "/sbin/init";

/// Whether the kernel command line asks for the guest's own init.
pub fn wanted(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|t| t == "skiff.init=system")
}

/// The target the guest is ready at.
pub fn target(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .find_map(|t| t.strip_prefix("skiff.target="))
        .unwrap_or("multi-user.target")
        .to_owned()
}

/// The runtime unit that starts the agent inside the guest.
pub fn unit_text() -> String {
    format!(
        "[Unit]\n\
         Description=skiff guest agent (exec, files and shutdown for the host)\n\
         DefaultDependencies=no\n\
         After=local-fs.target\n\
         Conflicts=shutdown.target\n\
         Before=shutdown.target\n\
         \n\
         [Service]\n\
         ExecStart={AGENT_PATH}\n\
         Restart=always\n\
         RestartSec=1\n"
    )
}

/// Install the agent and its unit under /run, then exec the guest's init.
/// Returns only if that is impossible (the reason is a setup problem, and
/// the agent carries on as PID 1 so that the host hears it).
pub fn hand_over() {
    if let Err(e) = install() {
        crate::problem(format!("cannot start the guest's own init: {e}"));
        return;
    }
    log(format_args!("handing PID 1 to {INIT}"));
    let err = exec_init();
    crate::problem(format!("cannot run the guest's init {INIT}: {err}"));
}

fn install() -> Result<(), String> {
    let init = fs::metadata(INIT)
        .map_err(|e| format!("{INIT}: {e} (is systemd installed in the image?)"))?;
    if !init.is_file() || init.permissions().mode() & 0o111 == 0 {
        return Err(format!("{INIT} is not an executable file"));
    }
    let me = fs::read("/proc/self/exe").map_err(|e| format!("read the agent: {e}"))?;
    fs::create_dir_all("/run/skiff").map_err(|e| format!("mkdir /run/skiff: {e}"))?;
    fs::write(AGENT_PATH, me).map_err(|e| format!("write {AGENT_PATH}: {e}"))?;
    fs::set_permissions(AGENT_PATH, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {AGENT_PATH}: {e}"))?;
    let wants = format!("{UNIT_DIR}/multi-user.target.wants");
    fs::create_dir_all(&wants).map_err(|e| format!("mkdir {wants}: {e}"))?;
    fs::write(format!("{UNIT_DIR}/{UNIT_NAME}"), unit_text())
        .map_err(|e| format!("write the agent's unit: {e}"))?;
    let link = format!("{wants}/{UNIT_NAME}");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("../{UNIT_NAME}"), &link)
        .map_err(|e| format!("enable the agent's unit: {e}"))?;
    Ok(())
}

fn exec_init() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    Command::new(INIT).arg0(INIT).exec()
}

/// As the guest's service: wait until `target` is active, logging what
/// failed on the way (a degraded system is still up).
pub fn wait_for_target(target: &str) {
    log(format_args!("waiting for {target}"));
    loop {
        let active = Command::new("systemctl")
            .args(["is-active", "--quiet", target])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if active {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed = Command::new("systemctl")
        .args(["--failed", "--no-legend", "--plain"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let units: Vec<&str> = failed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if units.is_empty() {
        log(format_args!("{target} reached"));
    } else {
        log(format_args!(
            "{target} reached; failed units: {}",
            units.join(", ")
        ));
    }
}

/// Power off through the guest's init, so that every unit stops and the
/// filesystems are unmounted cleanly.
pub fn power_off() {
    log(format_args!("asking the guest's init to power off"));
    let spawned = Command::new("systemctl")
        .args(["poweroff", "--no-block"])
        .stdin(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        log(format_args!("cannot run systemctl poweroff: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_names_the_init_and_its_target() {
        let c =
            "console=ttyS0 skiff.root=skiff-root skiff.init=system skiff.target=graphical.target";
        assert!(wanted(c));
        assert_eq!(target(c), "graphical.target");
        assert!(!wanted("console=ttyS0 skiff.init=systemd"));
        assert_eq!(target("skiff.init=system"), "multi-user.target");
    }

    #[test]
    fn the_unit_starts_the_agent_copy_and_stops_at_shutdown() {
        let u = unit_text();
        assert!(u.contains("ExecStart=/run/skiff/skiff-agent\n"), "{u}");
        assert!(u.contains("Conflicts=shutdown.target\n"), "{u}");
        assert!(u.contains("DefaultDependencies=no\n"), "{u}");
    }
}
