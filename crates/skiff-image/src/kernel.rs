//! Finding the guest kernel: a Debian package fetched into the cache, or a
//! kernel the user names.

use crate::tool::run_tool;
use crate::{Error, Progress};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian package skiff boots by default.
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A Debian kernel package (a meta package such as
    /// `linux-image-cloud-amd64` is resolved to the versioned one).
    Debian { package: String },
    /// A kernel image on disk, with an optional `lib/modules/<release>`
    /// directory for its modules (none: everything needed is built in).
    Path {
        kernel: PathBuf,
        modules: Option<PathBuf>,
    },
}

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// The bootable image (bzImage / vmlinuz).
    pub image: PathBuf,
    /// `lib/modules/<release>` with a `modules.dep`, if the kernel has modules.
    pub modules_dir: Option<PathBuf>,
    /// The kernel release (`uname -r` inside the guest).
    pub release: String,
    /// Whether the kernel loads unsigned modules (its config has module
    /// signatures but does not force them). Unknown counts as false.
    #[serde(default)]
    pub unsigned_modules_ok: bool,
}

/// Resolve `source` to a kernel, fetching and unpacking a Debian package into
/// `cache_dir/kernels` the first time.
pub fn ensure_kernel(
    source: &KernelSource,
    cache_dir: &Path,
    progress: &dyn Progress,
) -> Result<Kernel, Error> {
    match source {
        KernelSource::Path { kernel, modules } => user_kernel(kernel, modules.as_deref()),
        KernelSource::Debian { package } => debian_kernel(package, cache_dir, progress),
    }
}

fn user_kernel(image: &Path, modules: Option<&Path>) -> Result<Kernel, Error> {
    if !image.is_file() {
        return Err(Error::KernelMissing {
            path: image.to_owned(),
        });
    }
    let (modules_dir, release) = match modules {
        None => (None, String::new()),
        Some(dir) => {
            if !dir.join("modules.dep").is_file() {
                return Err(Error::ModulesDirInvalid {
                    path: dir.to_owned(),
                });
            }
            let release = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (Some(dir.to_owned()), release)
        }
    };
    Ok(Kernel {
        image: image.to_owned(),
        modules_dir,
        release,
        unsigned_modules_ok: false,
    })
}

fn debian_kernel(
    package: &str,
    cache_dir: &Path,
    progress: &dyn Progress,
) -> Result<Kernel, Error> {
    let kernels = cache_dir.join("kernels");
    // A cached kernel for the meta package is used as is; `skiff image
    // prune` (or deleting the cache) picks up a newer Debian kernel.
    let marker = kernels.join(format!("{package}.json"));
    if let Ok(text) = fs::read_to_string(&marker) {
        if let Ok(mut kernel) = serde_json::from_str::<Kernel>(&text) {
            if kernel.image.is_file() {
                kernel.unsigned_modules_ok = unsigned_modules_allowed(&read_config(&kernel));
                return Ok(kernel);
            }
        }
    }
    fs::create_dir_all(&kernels).map_err(|e| Error::io("create", &kernels, e))?;

    progress.step(&format!("resolving Debian package {package}"));
    let versioned = resolve_meta_package(package)?;
    let staging = tempfile::tempdir_in(&kernels)
        .map_err(|e| Error::io("create a directory in", &kernels, e))?;

    progress.step(&format!("downloading {versioned}"));
    run_tool(
        Command::new("apt-get")
            .args(["download", "-q", &versioned])
            .current_dir(staging.path()),
        "apt-get",
        "download the kernel package",
    )?;
    let deb = fs::read_dir(staging.path())
        .map_err(|e| Error::io("read", staging.path(), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| Error::Fetch {
            what: format!("apt-get download {versioned} produced no .deb file"),
        })?;

    progress.step(&format!("unpacking {versioned}"));
    let root = staging.path().join("root");
    run_tool(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb",
        "unpack the kernel package",
    )?;
    let release = single_entry(&root.join("lib/modules"))?;
    let image = root.join("boot").join(format!("vmlinuz-{release}"));
    if !image.is_file() {
        return Err(Error::Fetch {
            what: format!("{versioned} has no /boot/vmlinuz-{release}"),
        });
    }
    progress.step("indexing kernel modules (depmod)");
    run_tool(
        Command::new("depmod").arg("-b").arg(&root).arg(&release),
        "depmod",
        "index the kernel modules",
    )?;
    let _ = fs::remove_file(&deb);

    let final_dir = kernels.join(&versioned);
    let _ = fs::remove_dir_all(&final_dir);
    fs::rename(&root, &final_dir).map_err(|e| Error::io("move into place", &final_dir, e))?;
    drop(staging); // removes what is left of the download
    let config = fs::read_to_string(final_dir.join("boot").join(format!("config-{release}")))
        .unwrap_or_default();
    let kernel = Kernel {
        image: final_dir.join("boot").join(format!("vmlinuz-{release}")),
        modules_dir: Some(final_dir.join("lib/modules").join(&release)),
        release,
        unsigned_modules_ok: unsigned_modules_allowed(&config),
    };
    let json = serde_json::to_string_pretty(&kernel).map_err(|e| Error::Fetch {
        what: e.to_string(),
    })?;
    fs::write(&marker, json).map_err(|e| Error::io("write", &marker, e))?;
    Ok(kernel)
}

/// `linux-image-cloud-amd64` -> `linux-image-6.1.0-NN-cloud-amd64`.
fn resolve_meta_package(package: &str) -> Result<String, Error> {
    let out = run_tool(
        Command::new("apt-cache").args(["depends", "--no-recommends", "--no-suggests", package]),
        "apt-cache",
        "look up the kernel package",
    )?;
    Ok(parse_meta_depends(&out).unwrap_or_else(|| package.to_owned()))
}

/// The `linux-image-*` dependency in `apt-cache depends` output, if any.
pub fn parse_meta_depends(apt_cache_output: &str) -> Option<String> {
    apt_cache_output.lines().find_map(|line| {
        let dep = line.trim().strip_prefix("Depends:")?.trim();
        dep.starts_with("linux-image-").then(|| dep.to_owned())
    })
}

/// The `config-<release>` a Debian kernel package ships beside its image.
fn read_config(kernel: &Kernel) -> String {
    let Some(boot) = kernel.image.parent() else {
        return String::new();
    };
    fs::read_to_string(boot.join(format!("config-{}", kernel.release))).unwrap_or_default()
}

/// True when a kernel config shows that unsigned modules load: signatures
/// are not forced and no lockdown is forced at build time. An empty or
/// unreadable config counts as "no".
pub fn unsigned_modules_allowed(config: &str) -> bool {
    let set = |opt: &str| config.lines().any(|l| l.trim() == format!("{opt}=y"));
    let known = config.lines().any(|l| l.contains("CONFIG_MODULE_SIG"));
    known
        && !set("CONFIG_MODULE_SIG_FORCE")
        && !set("CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY")
        && !set("CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY")
}

fn single_entry(dir: &Path) -> Result<String, Error> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io("read", dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::Fetch {
            what: format!(
                "expected one kernel release in {}, found {names:?}",
                dir.display()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_package_resolves_to_its_linux_image_dependency() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_meta_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_meta_depends("foo\n  Depends: libc6\n"), None);
    }

    #[test]
    fn unsigned_modules_are_allowed_only_when_the_config_says_so() {
        let debian = "CONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\nCONFIG_SECURITY_LOCKDOWN_LSM=y\n";
        assert!(unsigned_modules_allowed(debian));
        assert!(!unsigned_modules_allowed(
            "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n"
        ));
        assert!(!unsigned_modules_allowed(
            "CONFIG_MODULE_SIG=y\nCONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY=y\n"
        ));
        assert!(!unsigned_modules_allowed(""));
    }

    #[test]
    fn a_missing_user_kernel_is_a_clear_error() {
        let err = user_kernel(Path::new("/nonexistent/vmlinuz"), None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinuz"), "{err}");
    }

    #[test]
    fn a_modules_dir_without_modules_dep_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("vmlinuz");
        fs::write(&image, b"x").expect("write");
        let err = user_kernel(&image, Some(dir.path())).unwrap_err();
        assert!(matches!(err, Error::ModulesDirInvalid { .. }), "{err}");
    }
}
