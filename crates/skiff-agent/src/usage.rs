//! `FsOp::Usage`: the guest's CPU counters and memory from /proc, and the
//! size and use of the file system holding a path, for the host's metrics
//! (E2B's `get_metrics`).

use skiff_proto::fs::{FsError, FsErrorKind, GuestUsage};
use std::path::Path;

/// (busy, total) clock ticks of all CPUs, and the number of CPUs, from
/// /proc/stat. Idle and iowait are the ticks not busy.
pub fn cpu_ticks(stat: &str) -> Option<(u64, u64, u32)> {
    let mut lines = stat.lines();
    let first = lines.next()?;
    let mut fields = first.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
    if ticks.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest ticks are
    // already in user and nice).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks[3] + ticks.get(4).copied().unwrap_or(0);
    let cpus = lines
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count() as u32;
    Some((total.saturating_sub(idle), total, cpus.max(1)))
}

/// `MemTotal`, `MemAvailable` and `Cached` of /proc/meminfo, in bytes.
pub fn memory(meminfo: &str) -> Option<(u64, u64, u64)> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kib * 1024)
        })
    };
    let total = field("MemTotal")?;
    // Kernels before 3.14 have no MemAvailable: free memory then.
    let available = field("MemAvailable").or_else(|| field("MemFree"))?;
    Some((total, available, field("Cached").unwrap_or(0)))
}

fn proc_file(path: &str) -> Result<String, FsError> {
    std::fs::read_to_string(path).map_err(|e| FsError::io(path, &e))
}

pub fn read(path: &Path) -> Result<GuestUsage, FsError> {
    let unreadable = |what: &str| FsError::new(FsErrorKind::Other, format!("cannot parse {what}"));
    let (cpu_busy_ticks, cpu_total_ticks, cpus) =
        cpu_ticks(&proc_file("/proc/stat")?).ok_or_else(|| unreadable("/proc/stat"))?;
    let (mem_total, mem_available, mem_cached) =
        memory(&proc_file("/proc/meminfo")?).ok_or_else(|| unreadable("/proc/meminfo"))?;
    let fs = nix::sys::statvfs::statvfs(path).map_err(|e| {
        FsError::io(
            &path.to_string_lossy(),
            &std::io::Error::from_raw_os_error(e as i32),
        )
    })?;
    let block = fs.fragment_size();
    let disk_total = fs.blocks().saturating_mul(block);
    let disk_used = fs
        .blocks()
        .saturating_sub(fs.blocks_free())
        .saturating_mul(block);
    Ok(GuestUsage {
        cpus,
        cpu_busy_ticks,
        cpu_total_ticks,
        mem_total,
        mem_available,
        mem_cached,
        disk_total,
        disk_used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_counters_are_read_from_proc() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\ncpu1 50 3 25 400 10 2 1 0 0 0\nintr 1 2\nctxt 5\n";
        assert_eq!(cpu_ticks(stat), Some((160, 980, 2)));
        assert_eq!(cpu_ticks("intr 1\n"), None);
        assert_eq!(cpu_ticks("cpu 1 2\n"), None, "too few fields");
        let meminfo = "MemTotal:         123456 kB\nMemFree:           1000 kB\nMemAvailable:      60000 kB\nBuffers:             10 kB\nCached:            2000 kB\nSwapCached:           0 kB\n";
        assert_eq!(
            memory(meminfo),
            Some((123456 * 1024, 60000 * 1024, 2000 * 1024))
        );
        assert_eq!(
            memory("MemTotal: 10 kB\nMemFree: 4 kB\n"),
            Some((10240, 4096, 0))
        );
        assert_eq!(memory("nothing"), None);
    }

    #[test]
    fn the_root_file_system_is_measured() {
        let u = read(Path::new("/")).expect("usage of /");
        assert!(u.mem_total > 0 && u.mem_available <= u.mem_total);
        assert!(u.cpu_busy_ticks <= u.cpu_total_ticks && u.cpus >= 1);
        assert!(u.disk_total > 0 && u.disk_used <= u.disk_total);
    }
}
