//! What each VM uses now, read from the host: its QEMU's CPU time and
//! resident memory (/proc/PID/stat), what QEMU read and wrote (/proc/PID/io:
//! the VM's disks, mostly), and the bytes through its TAP device
//! (/sys/class/net/TAP/statistics). `GET /v1/stats` and /metrics use it.

use crate::store::VmRecord;
use std::path::Path;

/// CPU seconds (user + system) and resident bytes, from the text of
/// /proc/PID/stat.
pub fn parse_stat(text: &str, ticks_per_sec: f64, page_bytes: u64) -> Option<(f64, u64)> {
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some(((utime + stime) / ticks_per_sec, rss_pages * page_bytes))
}

/// (read_bytes, write_bytes) from the text of /proc/PID/io: what reached
/// the storage layer, not the page cache.
pub fn parse_io(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((field("read_bytes:")?, field("write_bytes:")?))
}

fn sysconf(var: nix::unistd::SysconfVar, default: i64) -> i64 {
    nix::unistd::sysconf(var).ok().flatten().unwrap_or(default)
}

/// CPU seconds and resident bytes of a live process.
pub fn process_usage(pid: i32) -> Option<(f64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK, 100) as f64;
    let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096) as u64;
    parse_stat(&text, ticks, page)
}

fn counter(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One VM's usage now.
pub fn sample(vm: &VmRecord) -> skiff_api::VmStats {
    let pid = vm.qemu.filter(|q| q.is_alive()).map(|q| q.pid);
    let usage = pid.and_then(process_usage);
    let io = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/io")).ok())
        .and_then(|t| parse_io(&t));
    // Only a bridge VM has a TAP of its own; user-mode traffic is QEMU's.
    let tap = Path::new("/sys/class/net")
        .join(skiff_net::tap_name(&vm.id))
        .join("statistics");
    let (rx, tx) = match pid {
        // The host's receive is the guest's transmit, and back.
        Some(_) => (
            counter(&tap.join("tx_bytes")),
            counter(&tap.join("rx_bytes")),
        ),
        None => (None, None),
    };
    skiff_api::VmStats {
        vm: vm.name.clone(),
        state: vm.state,
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        cpu_seconds: usage.map(|u| u.0),
        memory_bytes: usage.map(|u| u.1),
        memory_limit_bytes: u64::from(vm.spec.memory_mib) << 20,
        net_rx_bytes: rx,
        net_tx_bytes: tx,
        disk_read_bytes: io.map(|i| i.0),
        disk_write_bytes: io.map(|i| i.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_even_with_odd_command_names() {
        let stat = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3 0 12345 1000000 2560 18446744073709551615";
        let (cpu, rss) = parse_stat(stat, 100.0, 4096).expect("parsed");
        assert!((cpu - 4.0).abs() < 1e-9, "{cpu}");
        assert_eq!(rss, 2560 * 4096);
        assert_eq!(parse_stat("garbage", 100.0, 4096), None);
        let io = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_io(io), Some((4096, 8192)));
        assert_eq!(parse_io("rchar: 1\n"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let (cpu, rss) = process_usage(std::process::id() as i32).expect("self");
        assert!(cpu >= 0.0 && rss > 1 << 20, "{cpu} {rss}");
    }
}
