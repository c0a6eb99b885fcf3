//! The guest's identity from the config drive (`identity.json`): host name,
//! time zone, and login users with their SSH keys. Applied by PID 1 after
//! the root is mounted and before the guest's own init starts, so that
//! systemd and sshd find them. What cannot be done is a setup problem: the
//! host reports it and the boot fails, rather than a user who cannot log in
//! finding out later.

use crate::log;
use skiff_proto::guest::{
    valid_ssh_key, valid_timezone, valid_user_name, GuestUser, Identity, CONFIG_MOUNT,
    IDENTITY_FILE,
};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The file is written by the host; bounded all the same.
const MAX_IDENTITY_BYTES: u64 = 1024 * 1024;

pub fn apply_from_config_drive() {
    let path = Path::new(CONFIG_MOUNT).join(IDENTITY_FILE);
    let Ok(file) = fs::File::open(&path) else {
        return; // No identity asked for.
    };
    let mut text = String::new();
    if let Err(e) = file.take(MAX_IDENTITY_BYTES).read_to_string(&mut text) {
        return crate::problem(format!("cannot read {}: {e}", path.display()));
    }
    match serde_json::from_str::<Identity>(&text) {
        Ok(id) => apply(&id),
        Err(e) => crate::problem(format!("{} is not valid: {e}", path.display())),
    }
}

fn apply(id: &Identity) {
    if let Some(name) = &id.hostname {
        set_hostname(name);
    }
    if let Some(tz) = &id.timezone {
        if let Err(e) = set_timezone(tz) {
            crate::problem(format!("timezone {tz:?}: {e}"));
        }
    }
    for user in &id.users {
        if let Err(e) = ensure_user(user) {
            crate::problem(format!("user {:?}: {e}", user.name));
        }
    }
}

pub(crate) fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        log(format_args!("cannot set hostname: {e}"));
    }
    // For the guest's own init, which sets the name from this file.
    if Path::new("/etc").is_dir() {
        if let Err(e) = fs::write("/etc/hostname", format!("{name}\n")) {
            log(format_args!("cannot write /etc/hostname: {e}"));
        }
        // So that the name resolves (sudo looks it up), as Debian does.
        let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
        let kept: Vec<&str> = hosts
            .lines()
            .filter(|l| !l.starts_with("127.0.1.1"))
            .collect();
        let text = format!("{}\n127.0.1.1\t{name}\n", kept.join("\n"));
        if let Err(e) = fs::write("/etc/hosts", text.trim_start()) {
            log(format_args!("cannot write /etc/hosts: {e}"));
        }
    }
}

fn set_timezone(tz: &str) -> Result<(), String> {
    if !valid_timezone(tz) {
        return Err("not a time zone name".into());
    }
    let zone = Path::new("/usr/share/zoneinfo").join(tz);
    if !zone.is_file() {
        return Err(format!(
            "{} is not in the guest (install tzdata in the image)",
            zone.display()
        ));
    }
    let _ = fs::remove_file("/etc/localtime");
    std::os::unix::fs::symlink(&zone, "/etc/localtime")
        .map_err(|e| format!("link /etc/localtime: {e}"))?;
    fs::write("/etc/timezone", format!("{tz}\n")).map_err(|e| format!("write /etc/timezone: {e}"))
}

/// The uid, gid and home of `name` in /etc/passwd.
fn passwd_entry(name: &str) -> Option<(u32, u32, String)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[0] == name)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?, f[5].to_owned())))?
    })
}

/// Run a tool of the guest's. PID 1 has no PATH of its own (the kernel
/// gives none), so the usual places are tried in turn.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| program.into());
    let out = Command::new(&found)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("{program} is not in the guest image (Debian's passwd package provides it)")
            }
            _ => format!("cannot run {program}: {e}"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

fn ensure_user(user: &GuestUser) -> Result<(), String> {
    if !valid_user_name(&user.name) || user.name == "root" {
        return Err("not a user name skiff creates".into());
    }
    if passwd_entry(&user.name).is_none() {
        let shell = if Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        run("useradd", &["-m", "-s", shell, &user.name])?;
    }
    if user.sudo {
        if !Path::new("/etc/sudoers.d").is_dir() {
            return Err("sudo = true needs sudo in the guest image".into());
        }
        run("usermod", &["-a", "-G", "sudo", &user.name])?;
        let rule = format!("/etc/sudoers.d/skiff-{}", user.name);
        fs::write(&rule, format!("{} ALL=(ALL) NOPASSWD:ALL\n", user.name))
            .and_then(|()| fs::set_permissions(&rule, fs::Permissions::from_mode(0o440)))
            .map_err(|e| format!("write {rule}: {e}"))?;
    }
    if user.ssh_authorized_keys.is_empty() {
        return Ok(());
    }
    let (uid, gid, home) = passwd_entry(&user.name).ok_or("not in /etc/passwd after useradd")?;
    let keys: Vec<&str> = user
        .ssh_authorized_keys
        .iter()
        .map(String::as_str)
        .filter(|k| valid_ssh_key(k))
        .collect();
    let ssh = Path::new(&home).join(".ssh");
    fs::create_dir_all(&ssh).map_err(|e| format!("mkdir {}: {e}", ssh.display()))?;
    let file = ssh.join("authorized_keys");
    fs::write(&file, keys.join("\n") + "\n")
        .map_err(|e| format!("write {}: {e}", file.display()))?;
    let owner = Some(nix::unistd::Uid::from_raw(uid));
    let group = Some(nix::unistd::Gid::from_raw(gid));
    for (path, mode) in [(&ssh, 0o700), (&file, 0o600)] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        nix::unistd::chown(path.as_path(), owner, group)
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(())
}
