//! The kernel's module tree as a read-only drive, for guests whose own init
//! runs after skiff's initramfs (`init = "system"`): they run skiff's
//! kernel, whose modules are not in their image, and Docker, iptables or a
//! VPN load theirs on demand (overlay, bridge, veth, nf_tables, wireguard).
//! The agent mounts it at `/lib/modules/RELEASE`, where kmod looks (on a
//! merged-/usr guest that is `/usr/lib/modules`, through the symlink).

use crate::drives::DriveError;
use crate::hostops::HostOps;
use skiff_proto::guest::MountArg;
use skiff_vmm::Drive;
use std::path::Path;

/// The ext4 label of the modules drive.
pub const MODULES_LABEL: &str = "skiff-modules";

/// The modules drive for the kernel whose tree is `modules_dir`
/// (`.../lib/modules/RELEASE`), built once into `cache_dir` (skiff's
/// cache, never beside a tree the user named) and rebuilt when the tree's
/// `modules.dep` changes.
pub fn ensure(
    host: &dyn HostOps,
    modules_dir: &Path,
    cache_dir: &Path,
) -> Result<Drive, DriveError> {
    let release = modules_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let image = cache_dir.join(image_name(modules_dir, &release));
    if !is_modules_image(&image) {
        std::fs::create_dir_all(cache_dir).map_err(|source| DriveError::Io {
            action: "create",
            path: cache_dir.to_owned(),
            source,
        })?;
        build(host, modules_dir, &image)?;
    }
    Ok(Drive {
        path: image,
        mount: mount_for(&release),
    })
}

/// Built under a name of its own (VMs of one daemon may boot at once),
/// synced, then linked into place unless another build got there first:
/// a VM never sees a half-written image, and a published one is never
/// replaced under a running VM.
fn build(host: &dyn HostOps, modules_dir: &Path, image: &Path) -> Result<(), DriveError> {
    let partial = image.with_extension(format!("partial.{}", crate::paths::new_vm_id()));
    let mib = skiff_image::tree_size(modules_dir) / (1024 * 1024);
    let size_mib = u32::try_from(mib + mib / 4 + 16).unwrap_or(u32::MAX);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| DriveError::Io {
            action,
            path,
            source,
        }
    };
    let result = host
        .make_ext4(MODULES_LABEL, Some(modules_dir), &partial, size_mib, false)
        .map_err(|source| DriveError::Build {
            what: "kernel modules",
            source,
        })
        .and_then(|()| {
            std::fs::File::open(&partial)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &partial))
        })
        .and_then(|()| match std::fs::hard_link(&partial, image) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && is_modules_image(image) => {
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A broken leftover (a crash mid-build before this code):
                // replace it.
                std::fs::rename(&partial, image).map_err(io("store", image))
            }
            other => other.map_err(io("store", image)),
        });
    let _ = std::fs::remove_file(&partial);
    result
}

/// An ext4 image labelled as the modules drive (not a truncated leftover).
fn is_modules_image(path: &Path) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; 2048];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && skiff_proto::guest::ext4_label(&head).as_deref() == Some(MODULES_LABEL)
}

/// `RELEASE-HASH.ext4`, the hash over the tree's path and its
/// `modules.dep` (size and time): a rebuilt tree gets a new image.
fn image_name(modules_dir: &Path, release: &str) -> String {
    use sha2::Digest;
    let dep = std::fs::metadata(modules_dir.join("modules.dep")).ok();
    let stamp = dep.map(|m| {
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("{}:{mtime}", m.len())
    });
    let mut h = sha2::Sha256::new();
    h.update(modules_dir.as_os_str().as_encoded_bytes());
    h.update(stamp.unwrap_or_default().as_bytes());
    format!("{release}-{}.ext4", hex::encode(&h.finalize()[..8]))
}

/// Where the guest finds the tree: kmod's directory for this release.
fn mount_for(release: &str) -> MountArg {
    MountArg {
        label: MODULES_LABEL.into(),
        target: format!("/lib/modules/{release}"),
        readonly: true,
        noexec: true,
        nosuid: true,
        nodev: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tree(dir: &Path, name: &str) -> PathBuf {
        let tree = dir.join(name).join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(tree.join("kernel")).expect("tree");
        std::fs::write(tree.join("modules.dep"), "kernel/x.ko:\n").expect("dep");
        tree
    }

    #[test]
    fn the_drive_is_in_the_cache_and_mounts_read_only_where_kmod_looks() {
        let m = mount_for("6.1.0-50-cloud-amd64");
        assert_eq!(m.target, "/lib/modules/6.1.0-50-cloud-amd64");
        assert!(m.readonly && m.noexec && m.nosuid && m.nodev);
        // It travels on the kernel command line as one word.
        assert!(!m.to_arg().contains(' '));
        let dir = tempfile::tempdir().expect("tempdir");
        let a = tree(dir.path(), "a");
        let b = tree(dir.path(), "b");
        let name = image_name(&a, "6.1.0-test");
        assert!(
            name.starts_with("6.1.0-test-") && name.ends_with(".ext4"),
            "{name}"
        );
        assert_ne!(name, image_name(&b, "6.1.0-test"), "two trees, two images");
        std::fs::write(a.join("modules.dep"), "kernel/x.ko:\nkernel/y.ko:\n").expect("dep");
        assert_ne!(
            name,
            image_name(&a, "6.1.0-test"),
            "a rebuilt tree, a new image"
        );
    }

    #[test]
    fn it_is_built_once_concurrently_and_a_failed_or_broken_build_is_not_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = tree(dir.path(), "k");
        let cache = dir.path().join("cache");
        let host = crate::hostops::LinuxHost::new(crate::hostops::LimitPlace::Off);
        // Two boots at once: both get the one image, nothing else is left.
        let (one, two) = std::thread::scope(|s| {
            let a = s.spawn(|| ensure(&host, &src, &cache));
            let b = s.spawn(|| ensure(&host, &src, &cache));
            (a.join().expect("thread"), b.join().expect("thread"))
        });
        let (one, two) = (one.expect("built"), two.expect("built"));
        assert_eq!(one.path, two.path);
        assert!(one.path.starts_with(&cache));
        let files: Vec<_> = std::fs::read_dir(&cache)
            .expect("cache")
            .flatten()
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let first = std::fs::metadata(&one.path)
            .expect("image")
            .modified()
            .expect("mtime");
        let again = ensure(&host, &src, &cache).expect("kept");
        assert_eq!(
            std::fs::metadata(&again.path)
                .expect("image")
                .modified()
                .expect("mtime"),
            first
        );
        // A truncated leftover is rebuilt, not mounted.
        std::fs::write(&one.path, b"").expect("truncate");
        ensure(&host, &src, &cache).expect("rebuilt");
        assert!(is_modules_image(&one.path));
        // A build that fails leaves nothing in the cache.
        let failing = crate::hostops::RecordingHost::default();
        failing.fail_on(MODULES_LABEL);
        let other = tree(dir.path(), "m");
        let empty = dir.path().join("empty-cache");
        assert!(ensure(&failing, &other, &empty).is_err());
        assert_eq!(std::fs::read_dir(&empty).expect("dir").count(), 0);
    }
}
