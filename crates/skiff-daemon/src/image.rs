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
