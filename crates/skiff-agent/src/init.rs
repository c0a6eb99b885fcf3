//! Turning a bare initramfs into a usable system: mounts, kernel modules.

use crate::log;
use nix::mount::{mount, MsFlags};
use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Milliseconds since the guest kernel started (CLOCK_BOOTTIME, which works
/// before /proc is mounted).
pub fn uptime_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => (ts.tv_sec() as u64) * 1000 + (ts.tv_nsec() as u64) / 1_000_000,
        Err(_) => 0,
    }
}

/// Everything PID 1 does before serving: mounts, hostname, modules.
/// Failures are logged, not fatal: a missing mount is better reported by the
/// command that needs it than by a dead VM.
pub fn prepare_system() {
    mount_filesystems();
    if let Err(e) = nix::unistd::sethostname("skiff") {
        log(format_args!("cannot set hostname: {e}"));
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let loaded = load_modules(Path::new("/lib/modules"), "modules.dep", &HashSet::new());
    // Optional module groups the host asked for (`skiff.load=net`).
    let mut all = loaded;
    for group in cmdline
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("skiff.load="))
    {
        if group.bytes().all(|b| b.is_ascii_alphanumeric()) {
            all.extend(load_modules(
                Path::new("/lib/modules"),
                &format!("modules.{group}.dep"),
                &all,
            ));
        }
    }
    match crate::rootdisk::wanted(&cmdline) {
        Some(serial) => {
            crate::rootdisk::switch(serial);
        }
        None => {
            crate::rootfs::switch_from_cmdline(&cmdline);
        }
    }
    if let Some(net) = crate::net::parse_cmdline(&cmdline) {
        crate::net::configure(&net);
    }
    crate::drives::mount_from_cmdline(&cmdline);
    crate::drives::mount_shares(&cmdline);
    crate::identity::apply_from_config_drive();
}

pub fn mount_filesystems() {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, None),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        if let Err(e) = fs::create_dir_all(target) {
            log(format_args!("cannot create {target}: {e}"));
            continue;
        }
        if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
            // EBUSY: already mounted (the kernel may mount devtmpfs itself).
            if e != nix::errno::Errno::EBUSY {
                log(format_args!("cannot mount {fstype} on {target}: {e}"));
            }
        }
    }
}

/// Load every module listed in `modules.dep` under the single kernel
/// directory in `root`, dependencies first. The image builder writes a
/// modules.dep that names exactly the modules this guest needs.
/// Returns the modules it loaded (paths as in the dep file), and skips
/// those in `already`.
pub fn load_modules(root: &Path, dep_file: &str, already: &HashSet<String>) -> HashSet<String> {
    let mut loaded = HashSet::new();
    let Some(dir) = kernel_module_dir(root) else {
        return loaded; // A kernel with everything built in needs no modules.
    };
    let dep_text = match fs::read_to_string(dir.join(dep_file)) {
        Ok(t) => t,
        Err(e) => {
            log(format_args!(
                "cannot read {}/{dep_file}: {e}",
                dir.display()
            ));
            return loaded;
        }
    };
    for module in load_order(&dep_text) {
        if already.contains(&module) {
            continue;
        }
        match insert_module(&dir.join(&module)) {
            Ok(()) => {
                loaded.insert(module);
            }
            Err(e) => log(format_args!("cannot load module {module}: {e}")),
        }
    }
    loaded
}

fn kernel_module_dir(root: &Path) -> Option<PathBuf> {
    let release = nix::sys::utsname::uname().ok()?;
    let dir = root.join(release.release());
    dir.join("modules.dep").exists().then_some(dir)
}

/// The order in which to load the modules of a `modules.dep` file: each
/// module after all its dependencies. modules.dep lists a module's
/// dependencies so that the last one must be loaded first.
pub fn load_order(dep_text: &str) -> Vec<String> {
    let mut deps_of: Vec<(String, Vec<String>)> = Vec::new();
    for line in dep_text.lines() {
        let Some((module, deps)) = line.split_once(':') else {
            continue;
        };
        let deps = deps.split_whitespace().map(str::to_owned).collect();
        deps_of.push((module.trim().to_owned(), deps));
    }
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for (module, deps) in &deps_of {
        for dep in deps.iter().rev() {
            if seen.insert(dep.clone()) {
                order.push(dep.clone());
            }
        }
        if seen.insert(module.clone()) {
            order.push(module.clone());
        }
    }
    order
}

fn insert_module(path: &Path) -> nix::Result<()> {
    let file = fs::File::open(path)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)))?;
    let params = CString::default();
    match nix::kmod::finit_module(file.as_fd(), &params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::load_order;

    #[test]
    fn dependencies_load_before_their_users_in_reverse_listing_order() {
        let dep = "\
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
";
        let order = load_order(dep);
        let pos = |m: &str| order.iter().position(|x| x.ends_with(m)).expect(m);
        assert!(pos("/virtio_ring.ko") < pos("/virtio.ko"));
        assert!(pos("/vsock.ko") < pos("/vmw_vsock_virtio_transport_common.ko"));
        assert!(pos("_common.ko") < pos("/vmw_vsock_virtio_transport.ko"));
        assert!(pos("/virtio.ko") < pos("/virtio_mmio.ko"));
        assert_eq!(order.len(), 6, "each module once: {order:?}");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert_eq!(load_order("garbage\n\n a.ko:\n"), vec!["a.ko".to_owned()]);
    }
}
