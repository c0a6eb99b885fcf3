//! The guest contract shared by host and agent: drive labels, where they
//! are mounted, and how the kernel command line names them.

/// Label of the read-only per-instance config drive.
pub const CONFIG_LABEL: &str = "skiff-config";
/// Where the config drive is mounted in the guest.
pub const CONFIG_MOUNT: &str = "/run/skiff/config";
/// Label of a VM's own data drive.
pub const DATA_LABEL: &str = "skiff-data";
/// Label of the read-only secrets drive.
pub const SECRETS_LABEL: &str = "skiff-secrets";
/// Where the secrets drive is mounted in the guest.
pub const SECRETS_MOUNT: &str = "/run/skiff/secrets";

/// One drive the agent mounts: `skiff.mount=LABEL@TARGET@FLAGS` on the
/// kernel command line, FLAGS `rw` or `ro`, plus `.noexec`, `.nosuid`,
/// `.nodev` as wanted (for example `ro.noexec.nosuid.nodev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountArg {
    pub label: String,
    pub target: String,
    pub readonly: bool,
    pub noexec: bool,
    pub nosuid: bool,
    pub nodev: bool,
}

impl MountArg {
    pub fn to_arg(&self) -> String {
        let mut flags = String::from(if self.readonly { "ro" } else { "rw" });
        for (on, name) in [
            (self.noexec, ".noexec"),
            (self.nosuid, ".nosuid"),
            (self.nodev, ".nodev"),
        ] {
            if on {
                flags.push_str(name);
            }
        }
        format!("skiff.mount={}@{}@{flags}", self.label, self.target)
    }

    /// Parse one `skiff.mount=` value (without the prefix).
    pub fn parse(value: &str) -> Option<MountArg> {
        let mut parts = value.split('@');
        let (label, target, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || label.is_empty() || !target.starts_with('/') {
            return None;
        }
        let flags: Vec<&str> = flags.split('.').collect();
        let readonly = match *flags.first()? {
            "ro" => true,
            "rw" => false,
            _ => return None,
        };
        Some(MountArg {
            label: label.to_owned(),
            target: target.to_owned(),
            readonly,
            noexec: flags.contains(&"noexec"),
            nosuid: flags.contains(&"nosuid"),
            nodev: flags.contains(&"nodev"),
        })
    }
}

/// The label of an ext4 image or device, if it is one.
pub fn ext4_label(superblock_area: &[u8]) -> Option<String> {
    // The superblock starts at byte 1024; magic 0xEF53 at offset 56, the
    // 16-byte volume name at offset 120.
    let sb = superblock_area.get(1024..1024 + 136)?;
    if sb.get(56..58)? != [0x53, 0xEF] {
        return None;
    }
    let name = sb.get(120..136)?;
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_args_round_trip_and_reject_garbage() {
        let m = MountArg {
            label: "skiff-config".into(),
            target: "/run/skiff/config".into(),
            readonly: true,
            noexec: true,
            nosuid: true,
            nodev: true,
        };
        let arg = m.to_arg();
        assert_eq!(
            arg,
            "skiff.mount=skiff-config@/run/skiff/config@ro.noexec.nosuid.nodev"
        );
        assert_eq!(
            MountArg::parse(arg.strip_prefix("skiff.mount=").expect("prefix")),
            Some(m)
        );
        for bad in ["", "x@relative@rw", "x@/t@maybe", "@/t@rw", "a@/b@rw@extra"] {
            assert_eq!(MountArg::parse(bad), None, "{bad:?}");
        }
    }
}
