//! Preparing the default guest image (kernel + initramfs) for a VM.

use crate::paths;
use crate::ui::StepProgress;
use skiff_image::{InitramfsSpec, Kernel, KernelSource};
use std::path::PathBuf;

/// Modules the default guest loads at boot: the virtio-mmio transport (the
/// devices are found through ACPI) and vsock for the control channel.
pub const GUEST_MODULES: &[&str] = &["virtio_mmio", "vmw_vsock_virtio_transport"];

/// Modules loaded only when the VM has the feature (`skiff.load=GROUP`).
pub const GUEST_MODULE_GROUPS: &[(&str, &[&str])] = &[
    ("net", &["virtio_net"]),
    ("blk", &["virtio_blk"]),
    ("fs", &["virtiofs"]),
    ("rootfs", &["virtiofs", "overlay"]),
    ("serial", &["virtio_console"]),
];

/// Why the guest image could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "cannot get a guest kernel (to boot one you already have: --kernel PATH [--modules DIR])"
    )]
    Kernel(#[source] skiff_image::Error),
    #[error("cannot build the guest initramfs")]
    Initramfs(#[source] skiff_image::Error),
    #[error(transparent)]
    Paths(#[from] paths::PathError),
}

/// Where the kernel should come from, as the user said.
#[derive(Debug, Clone, Default)]
pub struct KernelChoice {
    pub kernel: Option<PathBuf>,
    pub modules: Option<PathBuf>,
}

impl KernelChoice {
    fn source(&self) -> KernelSource {
        match &self.kernel {
            Some(k) => KernelSource::Path {
                kernel: k.clone(),
                modules: self.modules.clone(),
            },
            None => KernelSource::Debian {
                package: skiff_image::DEFAULT_KERNEL_PACKAGE.to_owned(),
            },
        }
    }
}

/// A bootable kernel and initramfs.
pub struct GuestImage {
    pub kernel: Kernel,
    pub initrd: PathBuf,
    pub built: bool,
}

/// Make sure the default image exists (building it with progress if not).
pub fn prepare(choice: &KernelChoice, quiet: bool) -> Result<GuestImage, ImageError> {
    let cache = paths::cache_dir()?;
    let progress = StepProgress::new(quiet);
    let kernel = skiff_image::ensure_kernel(&choice.source(), &cache, &progress)
        .map_err(ImageError::Kernel)?;
    let agent = paths::agent_binary()?;
    let busybox = paths::busybox();
    let modules: &[&str] = if kernel.modules_dir.is_some() {
        GUEST_MODULES
    } else {
        &[]
    };
    let spec = InitramfsSpec {
        agent: &agent,
        busybox: busybox.as_deref(),
        kernel: &kernel,
        modules,
        module_groups: if kernel.modules_dir.is_some() {
            GUEST_MODULE_GROUPS
        } else {
            &[]
        },
    };
    let initramfs =
        skiff_image::ensure_initramfs(&spec, &cache, &progress).map_err(ImageError::Initramfs)?;
    progress.finish();
    if busybox.is_none() && !quiet {
        eprintln!("skiff: warning: no static busybox found (install busybox-static); the guest has no shell or tools");
    }
    Ok(GuestImage {
        kernel,
        initrd: initramfs.path,
        built: initramfs.built,
    })
}

/// How a command runs where its request leaves things open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandSetting {
    /// Applied in order by the agent: a later entry wins.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// The OCI image configuration of the image a spec boots (its `image`, or
/// its disk's): None for a recipe image, no image, or one gone from the
/// cache.
pub fn container_config(spec: &skiff_spec::VmSpec) -> Option<skiff_image::ContainerConfig> {
    let name = *spec.images().first()?;
    let cache = paths::cache_dir().ok()?;
    skiff_oci::find_image(&cache, name)?.config
}

/// What a command gets, as docker decides it: the image's Env under the
/// spec's `env` under the request's own; the request's working directory
/// and user, else the image's.
pub fn command_setting(
    image: Option<&skiff_image::ContainerConfig>,
    spec_env: &std::collections::BTreeMap<String, String>,
    request: CommandSetting,
) -> CommandSetting {
    let mut env = image.map(|c| c.env_pairs()).unwrap_or_default();
    env.extend(spec_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(request.env);
    CommandSetting {
        env,
        workdir: request
            .workdir
            .or_else(|| image.and_then(|c| c.working_dir.clone())),
        user: request.user.or_else(|| image.and_then(|c| c.user.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> skiff_image::ContainerConfig {
        skiff_image::ContainerConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/image/bin".into(), "MODE=image".into()],
            working_dir: Some("/app".into()),
            user: Some("1000:1000".into()),
        }
    }

    #[test]
    fn the_request_wins_over_the_spec_over_the_image() {
        let spec_env = [("MODE".to_owned(), "spec".to_owned())].into();
        let got = command_setting(
            Some(&config()),
            &spec_env,
            CommandSetting {
                env: vec![("EXTRA".into(), "1".into())],
                workdir: Some("/tmp".into()),
                user: Some("root".into()),
            },
        );
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            got.env,
            pairs(&[
                ("PATH", "/image/bin"),
                ("MODE", "image"),
                ("MODE", "spec"),
                ("EXTRA", "1")
            ])
        );
        assert_eq!(got.workdir.as_deref(), Some("/tmp"));
        assert_eq!(got.user.as_deref(), Some("root"));
    }

    #[test]
    fn the_image_fills_what_the_request_leaves_out() {
        let got = command_setting(Some(&config()), &Default::default(), Default::default());
        assert_eq!(got.workdir.as_deref(), Some("/app"));
        assert_eq!(got.user.as_deref(), Some("1000:1000"));
        assert_eq!(got.env.len(), 2);
        let none = command_setting(None, &Default::default(), Default::default());
        assert_eq!(none, CommandSetting::default());
    }
}
