//! Switching from the initramfs to a root filesystem the host shares
//! (`skiff.rootfs=TAG@overlay|rw`): the share is the lower layer of an
//! overlay whose writes stay in guest memory, or the root itself (rw).
//! The agent keeps running as PID 1 and chroots into the new root.

use crate::log;
use nix::mount::{mount, MsFlags};
use std::fs;

/// Returns true if the root was switched.
pub fn switch_from_cmdline(cmdline: &str) -> bool {
    let Some(value) = cmdline
        .split_whitespace()
        .find_map(|t| t.strip_prefix("skiff.rootfs="))
    else {
        return false;
    };
    let Some((tag, mode)) = value.split_once('@') else {
        log(format_args!("ignoring malformed skiff.rootfs={value}"));
        return false;
    };
    let overlay = match mode {
        "overlay" => true,
        "rw" => false,
        _ => {
            log(format_args!("ignoring skiff.rootfs mode {mode:?}"));
            return false;
        }
    };
    match switch(tag, overlay) {
        Ok(()) => true,
        Err(e) => {
            log(format_args!(
                "cannot switch to the shared root filesystem: {e}"
            ));
            false
        }
    }
}

fn switch(tag: &str, overlay: bool) -> Result<(), String> {
    let step = |what: &str, r: nix::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    let mkdir = |p: &str| fs::create_dir_all(p).map_err(|e| format!("mkdir {p}: {e}"));
    mkdir("/sysroot/base")?;
    let base_flags = if overlay {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    step(
        "mount the root share",
        mount(
            Some(tag),
            "/sysroot/base",
            Some("virtiofs"),
            base_flags,
            None::<&str>,
        ),
    )?;
    let root = if overlay {
        mkdir("/sysroot/rw")?;
        step(
            "mount the overlay's tmpfs",
            mount(
                Some("tmpfs"),
                "/sysroot/rw",
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=0755"),
            ),
        )?;
        mkdir("/sysroot/rw/upper")?;
        mkdir("/sysroot/rw/work")?;
        mkdir("/sysroot/root")?;
        step(
            "mount the overlay",
            mount(
                Some("overlay"),
                "/sysroot/root",
                Some("overlay"),
                MsFlags::empty(),
                Some("lowerdir=/sysroot/base,upperdir=/sysroot/rw/upper,workdir=/sysroot/rw/work"),
            ),
        )?;
        "/sysroot/root"
    } else {
        "/sysroot/base"
    };
    step("chroot", nix::unistd::chroot(root))?;
    step("chdir", nix::unistd::chdir("/"))?;
    // The new root needs its own /proc, /sys, /dev, /tmp and /run.
    crate::init::mount_filesystems();
    Ok(())
}
