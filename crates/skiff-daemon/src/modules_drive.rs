//! The kernel's module tree as a read-only drive, for guests whose own init
//! runs after skiff's initramfs (`init = "system"`): they run skiff's
//! kernel, whose modules are not in their image, and Docker, iptables or a
//! VPN load theirs on demand (overlay, bridge, veth, nf_tables, wireguard).
//! The agent mounts it at `/usr/lib/modules/RELEASE`, where kmod looks.

use crate::drives::DriveError;
use crate::hostops::HostOps;
use skiff_proto::guest::MountArg;
use skiff_vmm::Drive;
use std::path::{Path, PathBuf};

/// The ext4 label of the modules drive.
pub const MODULES_LABEL: &str = "skiff-modules";

/// The modules drive for the kernel whose tree is `modules_dir`
/// (`.../lib/modules/RELEASE`), built once beside it in the cache.
pub fn ensure(host: &dyn HostOps, modules_dir: &Path) -> Result<Drive, DriveError> {
    let release = modules_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let image = image_path(modules_dir, &release);
    if !image.exists() {
        // Built under a temporary name and renamed: two VMs booting at once
        // never use a half-written image.
        let partial = image.with_extension(format!("ext4.{}", std::process::id()));
        let mib = skiff_image::tree_size(modules_dir) / (1024 * 1024);
        let size_mib = u32::try_from(mib + mib / 4 + 16).unwrap_or(u32::MAX);
        host.make_ext4(MODULES_LABEL, Some(modules_dir), &partial, size_mib, false)
            .map_err(|source| DriveError::Build {
                what: "kernel modules",
                source,
            })?;
        std::fs::rename(&partial, &image).map_err(|source| {
            let _ = std::fs::remove_file(&partial);
            DriveError::Io {
                action: "store",
                path: image.clone(),
                source,
            }
        })?;
    }
    Ok(Drive {
        path: image,
        mount: mount_for(&release),
    })
}

/// Where the guest finds the tree: kmod's directory for this release.
fn mount_for(release: &str) -> MountArg {
    MountArg {
        label: MODULES_LABEL.into(),
        target: format!("/usr/lib/modules/{release}"),
        readonly: true,
        noexec: true,
        nosuid: true,
        nodev: true,
    }
}

/// `CACHE/kernels/X/lib/modules/RELEASE` → `CACHE/kernels/X/modules-RELEASE.ext4`.
fn image_path(modules_dir: &Path, release: &str) -> PathBuf {
    let kernel_dir = modules_dir
        .ancestors()
        .nth(3)
        .unwrap_or(modules_dir)
        .to_owned();
    kernel_dir.join(format!("modules-{release}.ext4"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drive_sits_beside_the_kernel_and_mounts_read_only_where_kmod_looks() {
        let tree = Path::new("/cache/kernels/abc/lib/modules/6.1.0-50-cloud-amd64");
        assert_eq!(
            image_path(tree, "6.1.0-50-cloud-amd64"),
            Path::new("/cache/kernels/abc/modules-6.1.0-50-cloud-amd64.ext4")
        );
        let m = mount_for("6.1.0-50-cloud-amd64");
        assert_eq!(m.target, "/usr/lib/modules/6.1.0-50-cloud-amd64");
        assert!(m.readonly && m.noexec && m.nosuid && m.nodev);
        // It travels on the kernel command line as one word.
        assert!(!m.to_arg().contains(' '));
    }

    #[test]
    fn it_is_built_once_and_a_failed_build_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("k/lib/modules/6.1.0-test");
        std::fs::create_dir_all(tree.join("kernel")).expect("tree");
        std::fs::write(tree.join("modules.dep"), "kernel/x.ko:\n").expect("dep");
        let host = crate::hostops::LinuxHost { cgroups: None };
        let drive = ensure(&host, &tree).expect("built");
        assert_eq!(drive.path, dir.path().join("k/modules-6.1.0-test.ext4"));
        let first = std::fs::metadata(&drive.path)
            .expect("image")
            .modified()
            .expect("mtime");
        let again = ensure(&host, &tree).expect("kept");
        assert_eq!(
            std::fs::metadata(&again.path)
                .expect("image")
                .modified()
                .expect("mtime"),
            first
        );
        let failing = crate::hostops::RecordingHost::default();
        failing.fail_on(MODULES_LABEL);
        let other = dir.path().join("m/lib/modules/6.1.0-other");
        std::fs::create_dir_all(&other).expect("tree");
        assert!(ensure(&failing, &other).is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("m"))
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("modules-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
