//! `POST /v1/run` (upgraded to frames): the flags of `skiff run`. The
//! daemon turns it into the spec of an ephemeral VM; `--standalone` boots
//! the same spec in-process.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    #[schemars(length(min = 1))]
    pub argv: Vec<String>,
    #[schemars(range(min = 1, max = 255))]
    pub cpus: u32,
    #[schemars(range(min = 64))]
    pub memory_mib: u32,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// The guest user the command runs as: a name from its /etc/passwd, or
    /// `UID` / `UID:GID` (an OCI image's `User`). None: root.
    #[serde(default)]
    pub user: Option<String>,
    /// auto, kvm or tcg (the spec's `accel`).
    pub accel: skiff_spec::Accel,
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub modules: Option<PathBuf>,
    #[schemars(range(min = 1, max = 3600))]
    pub boot_timeout_secs: u64,
    #[serde(default)]
    pub quiet: bool,
    #[serde(default)]
    pub stdin: bool,
    /// Run the command on a pseudo-terminal of this size (`run -t`): its
    /// output is one stream, and the client's `Resize` frames follow.
    #[serde(default)]
    pub tty: Option<crate::TtySize>,
    /// "none" (default), "user", or the name of a managed network.
    #[serde(default)]
    pub net: Option<String>,
    /// Port forwards as `[ADDR:]HOST:GUEST[/tcp|/udp]`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Host directories to share (absolute paths on the daemon's host).
    #[serde(default)]
    pub shares: Vec<RunShare>,
    /// A host directory to boot into instead of the default image.
    #[serde(default)]
    pub rootfs: Option<RunRootFs>,
}

/// `-v HOST_DIR:GUEST_PATH[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunShare {
    pub source: PathBuf,
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
}

/// `--rootfs DIR [--rootfs-rw]`, or the directory of `--image NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRootFs {
    pub source: PathBuf,
    #[serde(default)]
    pub writable: bool,
}

/// The longest boot timeout a run may ask for.
pub const MAX_BOOT_TIMEOUT_SECS: u64 = 3600;

impl RunBody {
    /// How long the guest may take to become ready.
    pub fn boot_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.boot_timeout_secs.clamp(1, MAX_BOOT_TIMEOUT_SECS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_travels_as_its_name_and_nonsense_is_refused_by_name() {
        let body: RunBody = serde_json::from_str(
            r#"{"argv":["true"],"cpus":1,"memory_mib":256,"accel":"tcg","boot_timeout_secs":5}"#,
        )
        .expect("valid");
        assert_eq!(body.accel, skiff_spec::Accel::Tcg);
        let err = serde_json::from_str::<RunBody>(
            r#"{"argv":["true"],"cpus":1,"memory_mib":256,"accel":"fast","boot_timeout_secs":5}"#,
        )
        .expect_err("invalid");
        assert!(err.to_string().contains("unknown variant `fast`"), "{err}");
        let err = serde_json::from_str::<RunBody>(
            r#"{"argv":["true"],"cpus":1,"memory_mib":256,"accel":"tcg","boot_timeout_secs":5,"cpu":2}"#,
        )
        .expect_err("invalid");
        assert!(err.to_string().contains("unknown field `cpu`"), "{err}");
    }
}
