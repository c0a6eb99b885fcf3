//! `skiff stats`: what each VM uses, as `docker stats` shows it. Two
//! samples of the daemon's counters a second apart give the CPU rate;
//! memory, network and disk are shown as they stand.

use crate::cli_vm::typed;
use crate::client::Client;
use anyhow::Result;
use hyper::Method;
use skiff_api::VmStats;
use std::time::Duration;

/// One row of `skiff stats`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StatsRow {
    pub vm: String,
    pub state: skiff_api::VmState,
    /// Of one CPU: 200 is two CPUs busy.
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: u64,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    pub disk_read_bytes: Option<u64>,
    pub disk_write_bytes: Option<u64>,
}

/// The rows from two samples (`before` may lack a VM that just started).
pub fn rows(before: &[VmStats], now: &[VmStats], names: &[String]) -> Vec<StatsRow> {
    now.iter()
        .filter(|s| names.is_empty() || names.contains(&s.vm))
        .map(|s| {
            let prev = before.iter().find(|b| b.vm == s.vm);
            let cpu_percent = match (prev.and_then(|p| p.cpu_seconds), s.cpu_seconds, prev) {
                (Some(a), Some(b), Some(p)) if s.time_ms > p.time_ms => {
                    let secs = (s.time_ms - p.time_ms) as f64 / 1000.0;
                    Some(((b - a).max(0.0) / secs * 100.0 * 10.0).round() / 10.0)
                }
                _ => None,
            };
            StatsRow {
                vm: s.vm.clone(),
                state: s.state,
                cpu_percent,
                memory_bytes: s.memory_bytes,
                memory_limit_bytes: s.memory_limit_bytes,
                net_rx_bytes: s.net_rx_bytes,
                net_tx_bytes: s.net_tx_bytes,
                disk_read_bytes: s.disk_read_bytes,
                disk_write_bytes: s.disk_write_bytes,
            }
        })
        .collect()
}

fn size(b: Option<u64>) -> String {
    b.map_or_else(|| "-".into(), skiff_image::human_size)
}

pub fn table(rows: &[StatsRow]) -> String {
    let mut out = format!(
        "{:<24} {:>7}  {:>23}  {:>21}  {:>21}\n",
        "NAME", "CPU %", "MEM / LIMIT", "NET I/O", "BLOCK I/O"
    );
    for r in rows {
        let cpu = r
            .cpu_percent
            .map_or_else(|| "-".into(), |c| format!("{c:.1}%"));
        let mem = format!(
            "{} / {}",
            size(r.memory_bytes),
            skiff_image::human_size(r.memory_limit_bytes)
        );
        let net = format!("{} / {}", size(r.net_rx_bytes), size(r.net_tx_bytes));
        let disk = format!("{} / {}", size(r.disk_read_bytes), size(r.disk_write_bytes));
        out += &format!("{:<24} {cpu:>7}  {mem:>23}  {net:>21}  {disk:>21}\n", r.vm);
    }
    out
}

async fn sample(c: &Client) -> Result<Vec<VmStats>> {
    typed(&c.call(Method::GET, "/v1/stats", None).await?)
}

/// `skiff stats [NAME...]`: a table every 2 s until interrupted, or one
/// (`no_stream`); JSON rows with `json`. Names that match no VM are an
/// error.
pub async fn stats(c: &Client, names: &[String], no_stream: bool, json: bool) -> Result<i32> {
    let mut before = sample(c).await?;
    if let Some(missing) = names.iter().find(|n| !before.iter().any(|s| &s.vm == *n)) {
        anyhow::bail!("no VM named {missing:?}");
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sample(c).await?;
        let rows = rows(&before, &now, names);
        if json {
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            if tty && !no_stream {
                print!("\x1b[H\x1b[2J"); // a fresh screen, as docker stats
            }
            print!("{}", table(&rows));
        }
        if no_stream {
            return Ok(0);
        }
        before = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(vm: &str, t: u64, cpu: Option<f64>) -> VmStats {
        VmStats {
            vm: vm.into(),
            state: skiff_api::VmState::Running,
            time_ms: t,
            cpu_seconds: cpu,
            memory_bytes: Some(100 << 20),
            memory_limit_bytes: 256 << 20,
            net_rx_bytes: None,
            net_tx_bytes: None,
            disk_read_bytes: Some(4096),
            disk_write_bytes: Some(0),
        }
    }

    #[test]
    fn the_cpu_rate_comes_from_two_samples() {
        let before = [s("a", 1_000, Some(10.0)), s("b", 1_000, None)];
        let now = [
            s("a", 3_000, Some(11.5)),
            s("b", 3_000, Some(1.0)),
            s("c", 3_000, Some(1.0)),
        ];
        let r = rows(&before, &now, &[]);
        assert_eq!(r[0].cpu_percent, Some(75.0), "1.5 s of CPU in 2 s");
        assert_eq!(r[1].cpu_percent, None, "no earlier sample");
        assert_eq!(r[2].cpu_percent, None, "new since");
        let only = rows(&before, &now, &["b".to_owned()]);
        assert_eq!(only.len(), 1);
        let t = table(&r);
        assert!(
            t.lines().nth(1).is_some_and(|l| l.starts_with("a ")
                && l.contains("75.0%")
                && l.contains("100.0 MiB / 256.0 MiB")
                && l.contains("- / -")),
            "{t}"
        );
    }
}
