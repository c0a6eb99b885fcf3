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

/// The file on the config drive that holds the guest's identity.
pub const IDENTITY_FILE: &str = "identity.json";

/// Who the guest is, as the spec says: applied by the agent at boot,
/// before the guest's own init (if any) starts. The host checks every
/// field's form; the agent checks again, as it trusts no file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// A zone of /usr/share/zoneinfo, such as "Europe/Berlin".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<GuestUser>,
}

/// A login user the agent creates if the guest lacks it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestUser {
    pub name: String,
    /// Lines of its `~/.ssh/authorized_keys`.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Member of the `sudo` group, with password-less sudo.
    #[serde(default)]
    pub sudo: bool,
}

/// A user name `useradd` takes and a shell can quote without surprise.
pub fn valid_user_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 32
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// One authorized_keys line: printable, one line, a known key type.
pub fn valid_ssh_key(key: &str) -> bool {
    let known = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"];
    key.len() <= 16 * 1024
        && known.iter().any(|p| key.starts_with(p))
        && key.split_whitespace().count() >= 2
        && !key.chars().any(|c| c.is_control())
}

/// A time zone name: letters, digits, `_+-` and `/` between parts, no `..`.
pub fn valid_timezone(tz: &str) -> bool {
    !tz.is_empty()
        && tz.len() <= 64
        && !tz.starts_with('/')
        && tz.split('/').all(|part| {
            !part.is_empty()
                && part != ".."
                && part != "."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
        })
}

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
    fn identity_fields_are_checked_for_form() {
        for good in ["me", "_svc", "dev-1"] {
            assert!(valid_user_name(good), "{good}");
        }
        for bad in ["", "Me", "1me", "a b", "a;b", &"x".repeat(33)] {
            assert!(!valid_user_name(bad), "{bad}");
        }
        assert!(valid_ssh_key("ssh-ed25519 AAAAC3Nza me@host"));
        for bad in [
            "",
            "AAAA",
            "ssh-ed25519",
            "ssh-ed25519 AAAA\nssh-rsa BBBB",
            "command=\"x\" ssh-rsa A",
        ] {
            assert!(!valid_ssh_key(bad), "{bad:?}");
        }
        assert!(valid_timezone("Europe/Berlin") && valid_timezone("UTC"));
        for bad in ["", "/etc/passwd", "../../etc", "Europe/../x", "a b"] {
            assert!(!valid_timezone(bad), "{bad:?}");
        }
        let id = Identity {
            hostname: Some("dev".into()),
            timezone: None,
            users: vec![GuestUser {
                name: "me".into(),
                ssh_authorized_keys: vec!["ssh-ed25519 AAAA me".into()],
                sudo: true,
            }],
        };
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(serde_json::from_str::<Identity>(&json).expect("back"), id);
        assert!(serde_json::from_str::<Identity>("{\"root\": true}").is_err());
    }

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

/// Text a guest sent that the host stores or prints (its problems at
/// hello, the reason of an `Error`): control characters (terminal escapes,
/// newlines that would forge log lines) become `\u{FFFD}`, and it is cut to
/// `max` characters, marked with an ellipsis. The guest may send anything.
pub fn guest_text(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('\u{2026}');
    }
    out
}

/// Most problems a guest may report at hello, and characters of each.
pub const MAX_PROBLEMS: usize = 16;
pub const MAX_PROBLEM_CHARS: usize = 512;
/// Characters of an `Error` message from a guest.
pub const MAX_ERROR_CHARS: usize = 2048;

#[cfg(test)]
mod text_tests {
    use super::guest_text;

    #[test]
    fn guest_text_loses_control_characters_and_length() {
        assert_eq!(guest_text("disk full", 100), "disk full");
        assert_eq!(
            guest_text("ok\x1b]0;owned\x07\nfake: line", 100),
            "ok\u{FFFD}]0;owned\u{FFFD}\u{FFFD}fake: line"
        );
        assert_eq!(guest_text(&"é".repeat(10), 4), "éééé\u{2026}");
        assert_eq!(guest_text("abcd", 4), "abcd");
    }
}
