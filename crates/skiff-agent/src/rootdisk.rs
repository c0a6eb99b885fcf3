//! A root filesystem on a block device (`skiff.root=SERIAL`): the disk
//! whose virtio serial is SERIAL is mounted read-write and becomes `/`
//! (moved over the initramfs, as switch_root does). With `skiff.init=system`
//! the guest's own init then takes over PID 1 (see [`crate::sysinit`]);
//! otherwise the agent stays PID 1 inside the new root.

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

fn try_switch(serial: &str) -> Result<(), String> {
    let dev = find_device(serial)
        .ok_or_else(|| format!("no block device with serial {serial:?} appeared"))?;
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
            "{} is not an ext4 filesystem skiff can mount ({e}); the disk must hold ext4 directly, without a partition table",
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
