//! A root filesystem on a block device (`skiff.root=SERIAL`): the disk
//! whose virtio serial is SERIAL is mounted read-write and becomes `/`
//! (moved over the initramfs, as switch_root does). With `skiff.init=system`
//! the guest's own init then takes over PID 1 (see [`crate::sysinit`]);
//! otherwise the agent stays PID 1 inside the new root. A disk with a
//! partition table (a cloud image: a BIOS boot and an EFI partition beside
//! the root) boots from its largest ext4 partition.

use crate::log;
use nix::mount::{mount, MsFlags};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NEW_ROOT: &str = "/sysroot/disk";

/// The `skiff.root=` serial of the kernel command line, if any.
pub fn wanted(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find_map(|t| t.strip_prefix("skiff.root="))
}

/// The block device (`/dev/vdX`) whose virtio serial is `serial`, waiting
/// a moment for the driver to probe it.
fn find_device(serial: &str) -> Option<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(entries) = fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let found =
                    fs::read_to_string(e.path().join("serial")).is_ok_and(|s| s.trim() == serial);
                if found {
                    return Some(PathBuf::from("/dev").join(e.file_name()));
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mount the root disk and make it `/`. On failure the reason is recorded
/// as a setup problem (the host reports it) and the initramfs stays `/`.
pub fn switch(serial: &str) -> bool {
    match try_switch(serial) {
        Ok(()) => true,
        Err(e) => {
            crate::problem(format!("cannot boot from the root disk: {e}"));
            false
        }
    }
}

/// The ext4 superblock's magic, at byte 1080 of the filesystem.
fn is_ext4(dev: &std::path::Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 2];
    fs::File::open(dev)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(1080))?;
            f.read_exact(&mut magic)
        })
        .is_ok()
        && magic == [0x53, 0xef]
}

/// A partition of the disk: its device and size in sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Partition {
    dev: PathBuf,
    sectors: u64,
}

/// The disk's partitions, from /sys/block/DISK/DISKn.
fn partitions(disk: &std::path::Path) -> Vec<Partition> {
    let Some(name) = disk.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let sys = PathBuf::from("/sys/block").join(&name);
    let Ok(entries) = fs::read_dir(&sys) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&name) && e.path().join("partition").exists()
        })
        .map(|e| Partition {
            dev: PathBuf::from("/dev").join(e.file_name()),
            sectors: fs::read_to_string(e.path().join("size"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
        })
        .collect()
}

/// Which device holds the root: the disk itself when it is ext4, else its
/// largest ext4 partition.
fn pick_root(
    disk: &std::path::Path,
    parts: &[Partition],
    is_ext4: impl Fn(&std::path::Path) -> bool,
) -> Option<PathBuf> {
    if is_ext4(disk) {
        return Some(disk.to_owned());
    }
    // The largest; of equal ones, the first by name (vda1 before vda2).
    parts
        .iter()
        .filter(|p| is_ext4(&p.dev))
        .max_by(|a, b| a.sectors.cmp(&b.sectors).then_with(|| b.dev.cmp(&a.dev)))
        .map(|p| p.dev.clone())
}

fn try_switch(serial: &str) -> Result<(), String> {
    let disk = find_device(serial)
        .ok_or_else(|| format!("no block device with serial {serial:?} appeared"))?;
    // The kernel lists a table's partitions a moment after the disk.
    let mut parts = partitions(&disk);
    let deadline = Instant::now() + Duration::from_secs(2);
    while parts.is_empty() && !is_ext4(&disk) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        parts = partitions(&disk);
    }
    let dev = pick_root(&disk, &parts, is_ext4).ok_or_else(|| {
        let what = if parts.is_empty() {
            "it holds no ext4 filesystem and no partition table".to_owned()
        } else {
            format!("none of its {} partitions holds ext4", parts.len())
        };
        format!(
            "{} is not an ext4 filesystem skiff can mount: {what}; give a disk with ext4 on it or on one of its partitions",
            disk.display()
        )
    })?;
    fs::create_dir_all(NEW_ROOT).map_err(|e| format!("mkdir {NEW_ROOT}: {e}"))?;
    mount(
        Some(&dev),
        NEW_ROOT,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "{} is not an ext4 filesystem skiff can mount ({e})",
            dev.display()
        )
    })?;
    // The initramfs's own mounts stay behind; the new root gets fresh ones.
    nix::unistd::chdir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("move the root disk to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    crate::init::mount_filesystems();
    log(format_args!("root: {} (ext4, read-write)", dev.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn part(dev: &str, sectors: u64) -> Partition {
        Partition {
            dev: dev.into(),
            sectors,
        }
    }

    #[test]
    fn the_root_is_the_disk_or_its_largest_ext4_partition() {
        let disk = Path::new("/dev/vda");
        let cloud = [
            part("/dev/vda1", 4_000_000),
            part("/dev/vda14", 8192),
            part("/dev/vda15", 253_952),
        ];
        // A cloud image: BIOS boot and EFI (vfat) beside the ext4 root.
        let ext4 = |p: &Path| p == Path::new("/dev/vda1");
        assert_eq!(pick_root(disk, &cloud, ext4), Some("/dev/vda1".into()));
        // Two ext4 partitions: the larger one; of equal ones, the first.
        let two = [part("/dev/vda1", 1000), part("/dev/vda2", 5000)];
        let both = |p: &Path| p != disk;
        assert_eq!(pick_root(disk, &two, both), Some("/dev/vda2".into()));
        let equal = [part("/dev/vda2", 5000), part("/dev/vda1", 5000)];
        assert_eq!(pick_root(disk, &equal, both), Some("/dev/vda1".into()));
        // ext4 straight on the disk wins.
        assert_eq!(pick_root(disk, &two, |_| true), Some(disk.to_owned()));
        assert_eq!(pick_root(disk, &cloud, |_| false), None);
    }

    #[test]
    fn ext4_is_told_by_its_superblock_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("fs");
        let mut bytes = vec![0u8; 2048];
        std::fs::write(&fake, &bytes).expect("write");
        assert!(!is_ext4(&fake));
        bytes[1080] = 0x53;
        bytes[1081] = 0xef;
        std::fs::write(&fake, &bytes).expect("write");
        assert!(is_ext4(&fake));
        assert!(!is_ext4(&dir.path().join("absent")));
    }
}
