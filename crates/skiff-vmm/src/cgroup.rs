//! Host-side limits for a VM's processes (QEMU and its helpers): a memory
//! limit and a CPU quota in a cgroup of their own, under the daemon's own
//! cgroup. cgroup v2 when its memory and cpu controllers are available,
//! else the v1 `memory` and `cpu` hierarchies. Planning (which files get
//! which values) is pure; [`VmCgroup`] does the writes.

use std::io;
use std::path::{Path, PathBuf};

/// Where the controllers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One directory for both controllers.
    V2 { base: PathBuf },
    /// One directory per controller.
    V1 { memory: PathBuf, cpu: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CPU time per period, in microseconds: `(cpus + 1) × period`, the
    /// vCPU threads and one core for device emulation (virtio queues, the
    /// main loop), which would otherwise steal from the vCPUs.
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
}

/// Host memory a VM may use beyond its guest RAM: QEMU's own heap, device
/// buffers and, under TCG, the translation cache (about 65 MiB idle here;
/// it grows with the code the guest runs).
pub const OVERHEAD_MIB: u64 = 256;
pub const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    pub fn for_vm(memory_mib: u32, cpus: u32) -> Limits {
        Limits {
            memory_bytes: (u64::from(memory_mib) + OVERHEAD_MIB) * 1024 * 1024,
            cpu_quota_us: (u64::from(cpus) + 1) * CPU_PERIOD_US,
            cpu_period_us: CPU_PERIOD_US,
        }
    }
}

/// The directories to create and the files to write, in order.
pub fn plan(h: &Hierarchy, name: &str, l: &Limits) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    match h {
        Hierarchy::V2 { base } => {
            let dir = base.join(name);
            (
                vec![dir.clone()],
                vec![
                    (dir.join("memory.max"), l.memory_bytes.to_string()),
                    // No swap: the limit is the limit.
                    (dir.join("memory.swap.max"), "0".into()),
                    (
                        dir.join("cpu.max"),
                        format!("{} {}", l.cpu_quota_us, l.cpu_period_us),
                    ),
                ],
            )
        }
        Hierarchy::V1 { memory, cpu } => {
            let (m, c) = (memory.join(name), cpu.join(name));
            (
                vec![m.clone(), c.clone()],
                vec![
                    (m.join("memory.limit_in_bytes"), l.memory_bytes.to_string()),
                    (c.join("cpu.cfs_period_us"), l.cpu_period_us.to_string()),
                    (c.join("cpu.cfs_quota_us"), l.cpu_quota_us.to_string()),
                ],
            )
        }
    }
}

/// The cgroup path of this process for `controller` in /proc/self/cgroup
/// text (`""` for the v2 line).
pub fn own_path(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.to_owned())
    })
}

fn under(mount: &Path, own: &str) -> PathBuf {
    mount.join(own.trim_start_matches('/')).join("skiff")
}

/// Find a usable hierarchy below this process's own cgroups, creating the
/// `skiff` parent (and enabling the v2 controllers in it). None: no cgroup
/// with memory and cpu control is writable here.
pub fn detect() -> Option<Hierarchy> {
    let root = Path::new("/sys/fs/cgroup");
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let v2_controllers =
        std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if v2_controllers.split_whitespace().any(|c| c == "memory")
        && v2_controllers.split_whitespace().any(|c| c == "cpu")
    {
        let parent = under(root, &own_path(&own, "")?);
        std::fs::create_dir_all(&parent).ok()?;
        std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu").ok()?;
        return Some(Hierarchy::V2 { base: parent });
    }
    let memory = under(&root.join("memory"), &own_path(&own, "memory")?);
    let cpu = under(&root.join("cpu"), &own_path(&own, "cpu")?);
    std::fs::create_dir_all(&memory).ok()?;
    std::fs::create_dir_all(&cpu).ok()?;
    Some(Hierarchy::V1 { memory, cpu })
}

/// A VM's cgroup(s), created with their limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    pub dirs: Vec<PathBuf>,
}

impl VmCgroup {
    pub fn create(h: &Hierarchy, name: &str, l: &Limits) -> io::Result<VmCgroup> {
        let (dirs, writes) = plan(h, name, l);
        let cg = VmCgroup { dirs };
        for d in &cg.dirs {
            std::fs::create_dir_all(d)?;
        }
        for (file, value) in writes {
            // memory.swap.max is absent without swap accounting: not fatal.
            if let Err(e) = std::fs::write(&file, &value) {
                if !file.ends_with("memory.swap.max") {
                    cg.remove();
                    return Err(io::Error::new(e.kind(), format!("{}: {e}", file.display())));
                }
            }
        }
        Ok(cg)
    }

    /// Move a process (all its threads) into the cgroup(s).
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Remove the cgroup(s); they must be empty (the VM's processes gone).
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_the_right_files_in_each_version() {
        let l = Limits::for_vm(128, 2);
        assert_eq!(l.memory_bytes, 384 * 1024 * 1024);
        let v2 = Hierarchy::V2 {
            base: "/cg/skiff".into(),
        };
        let (dirs, writes) = plan(&v2, "vm1", &l);
        assert_eq!(dirs, [PathBuf::from("/cg/skiff/vm1")]);
        assert_eq!(
            writes[0],
            ("/cg/skiff/vm1/memory.max".into(), "402653184".into())
        );
        assert_eq!(
            writes[2],
            ("/cg/skiff/vm1/cpu.max".into(), "300000 100000".into())
        );
        let v1 = Hierarchy::V1 {
            memory: "/m/skiff".into(),
            cpu: "/c/skiff".into(),
        };
        let (dirs, writes) = plan(&v1, "vm1", &l);
        assert_eq!(dirs.len(), 2);
        assert!(writes.contains(&(
            "/m/skiff/vm1/memory.limit_in_bytes".into(),
            "402653184".into()
        )));
        assert!(writes.contains(&("/c/skiff/vm1/cpu.cfs_quota_us".into(), "300000".into())));
    }

    #[test]
    fn the_own_cgroup_is_read_per_controller() {
        let text =
            "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n0::/user.slice\n";
        assert_eq!(
            own_path(text, "memory").as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(own_path(text, "cpu").as_deref(), Some("/x"));
        assert_eq!(own_path(text, "").as_deref(), Some("/user.slice"));
        assert_eq!(own_path(text, "pids"), None);
        assert_eq!(
            under(Path::new("/sys/fs/cgroup/memory"), "/"),
            PathBuf::from("/sys/fs/cgroup/memory/skiff")
        );
    }
}
