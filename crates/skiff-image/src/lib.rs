//! Guest artifacts for skiff: the kernel and the initramfs, built once and
//! cached by content. Nothing here launches a VM.

mod cpio;
mod disk;
mod drive;
mod elf;
mod initramfs;
mod kernel;
mod recipe;
mod source;
mod tool;

pub use cpio::CpioWriter;
pub use disk::{
    disk_kind, ensure_image_disk, human_size, image_disk_path, make_overlay, overlay_args,
    tree_size, DiskKind, ROOT_LABEL,
};
pub use drive::make_ext4;
pub use elf::is_static;
pub use initramfs::{
    ensure_initramfs, select_modules, strip_module_signature, Initramfs, InitramfsSpec,
};
pub use kernel::{ensure_kernel, parse_meta_depends, Kernel, KernelSource, DEFAULT_KERNEL_PACKAGE};
pub use recipe::{
    build_image, find_image, images_dir, list_images, remove_image, ImageInfo, Recipe, RecipeError,
    RecipeFile,
};
pub use source::{ContainerConfig, ImageSource};

use std::path::{Path, PathBuf};

/// Receives the steps of a long operation, to show progress.
pub trait Progress {
    /// A new step started; `message` says what it does.
    fn step(&self, message: &str);
    /// The current step has moved `done` of `total` bytes (a download).
    fn bytes(&self, _done: u64, _total: u64) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {
    fn step(&self, _message: &str) {}
}

/// Errors building or finding guest artifacts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel image {} does not exist; pass an existing file to --kernel", path.display())]
    KernelMissing { path: PathBuf },
    #[error("{} is not a kernel modules directory (no modules.dep); pass lib/modules/<release> of the kernel to --modules", path.display())]
    ModulesDirInvalid { path: PathBuf },
    #[error("kernel module {name} is not in {}/modules.dep; the kernel needs it to reach the agent over vsock", modules_dir.display())]
    ModuleMissing { name: String, modules_dir: PathBuf },
    #[error("{tool} is not installed; it is needed to {purpose} (install it, or pass --kernel PATH [--modules DIR] to use a kernel you already have)")]
    ToolMissing {
        tool: &'static str,
        purpose: &'static str,
    },
    #[error("{tool} failed to {purpose}:\n{output}")]
    ToolFailed {
        tool: &'static str,
        purpose: &'static str,
        output: String,
    },
    #[error("cannot fetch the kernel: {what}")]
    Fetch { what: String },
    #[error("{what} at {} is dynamically linked, but the guest has no dynamic loader; {fix}", path.display())]
    NotStatic {
        what: &'static str,
        path: PathBuf,
        fix: &'static str,
    },
    #[error("{} is not a disk image: {why}", path.display())]
    NotADisk { path: PathBuf, why: &'static str },
    #[error("{what} at {} is not an ELF executable", path.display())]
    NotElf { what: &'static str, path: PathBuf },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}
