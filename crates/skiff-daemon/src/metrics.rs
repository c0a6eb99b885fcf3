//! `GET /metrics`: Prometheus text exposition of the daemon: per-VM state,
//! boots, restarts, CPU and memory of its QEMU, health, exec counts, and
//! proxy requests by status with their latency; and two histograms with
//! few labels (a label per VM would multiply every bucket by every VM a
//! pool ever made): boot time by the kind of init, command time by the
//! API that ran it.

use crate::store::{VmRecord, VmState};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Boot time buckets in seconds: a warm agent VM is ready in about 1 s
/// under TCG, a systemd guest in half a minute.
const BOOT_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];

#[derive(Clone)]
struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::with(BUCKETS)
    }
}

impl Histogram {
    fn with(buckets: &'static [f64]) -> Histogram {
        Histogram {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, secs: f64) {
        for (i, b) in self.buckets.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in self.buckets.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    proxy: BTreeMap<(String, u16), u64>,
    proxy_latency: BTreeMap<String, Histogram>,
    exec: BTreeMap<String, u64>,
    /// By API: `commands`, `exec`, `run`.
    exec_latency: BTreeMap<&'static str, Histogram>,
    /// By init: `agent`, `system`, `own`.
    boot_latency: BTreeMap<&'static str, Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn proxied(&self, vm: &str, status: u16, took: Duration) {
        let mut i = self.lock();
        *i.proxy.entry((vm.to_owned(), status)).or_default() += 1;
        i.proxy_latency
            .entry(vm.to_owned())
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Drop the series of a removed VM: names of `skiff run` and pool VMs
    /// are used once, so keeping them would grow the daemon for ever.
    pub fn forget(&self, vm: &str) {
        let mut i = self.lock();
        i.proxy.retain(|(v, _), _| v != vm);
        i.proxy_latency.remove(vm);
        i.exec.remove(vm);
    }

    pub fn exec_started(&self, vm: &str) {
        *self.lock().exec.entry(vm.to_owned()).or_default() += 1;
    }

    /// A command ended, run through `api` (`commands`, `exec`, `run`).
    pub fn exec_finished(&self, api: &'static str, took: Duration) {
        self.lock()
            .exec_latency
            .entry(api)
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// A boot reached ready; `init` is `agent`, `system` or `own`.
    pub fn booted(&self, init: &'static str, took: Duration) {
        self.lock()
            .boot_latency
            .entry(init)
            .or_insert_with(|| Histogram::with(BOOT_BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text for `vms` (`unhealthy` says which fail their
    /// health checks) and the counters kept here.
    pub fn render(&self, vms: &[VmRecord], unhealthy: impl Fn(&str) -> bool) -> String {
        let mut out = String::new();
        let mut section = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        section("skiff_vm_up", "gauge", "1 while the VM is running.");
        let mut body = String::new();
        for v in vms {
            let _ = writeln!(
                body,
                "skiff_vm_up{{vm=\"{}\"}} {}",
                label(&v.name),
                u8::from(v.state == VmState::Running)
            );
        }
        out.push_str(&body);
        let table =
            |out: &mut String, name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (labels, value) in rows {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            };
        let per_vm =
            |f: &dyn Fn(&crate::store::VmRecord) -> Option<String>| -> Vec<(String, String)> {
                vms.iter()
                    .filter_map(|v| Some((format!("vm=\"{}\"", label(&v.name)), f(v)?)))
                    .collect()
            };
        table(
            &mut out,
            "skiff_vm_state",
            "gauge",
            "The VM's state (1 for the current one).",
            vms.iter()
                .map(|v| {
                    (
                        format!("vm=\"{}\",state=\"{}\"", label(&v.name), v.state.as_str()),
                        "1".into(),
                    )
                })
                .collect(),
        );
        table(
            &mut out,
            "skiff_vm_boots_total",
            "counter",
            "Boots of the VM.",
            per_vm(&|v| Some(v.boots.to_string())),
        );
        table(
            &mut out,
            "skiff_vm_restarts_total",
            "counter",
            "Restarts by the restart policy or health check.",
            per_vm(&|v| Some(v.restarts.to_string())),
        );
        let live = |v: &crate::store::VmRecord| {
            v.qemu
                .filter(|q| q.is_alive())
                .and_then(|q| crate::stats::process_usage(q.pid))
        };
        table(
            &mut out,
            "skiff_vm_cpu_seconds_total",
            "counter",
            "CPU time of the VM's QEMU.",
            per_vm(&|v| live(v).map(|(c, _)| c.to_string())),
        );
        table(
            &mut out,
            "skiff_vm_memory_bytes",
            "gauge",
            "Resident memory of the VM's QEMU.",
            per_vm(&|v| live(v).map(|(_, r)| r.to_string())),
        );
        table(
            &mut out,
            "skiff_vm_healthy",
            "gauge",
            "1 unless the VM fails its HTTP health check.",
            per_vm(&|v| {
                v.spec
                    .http
                    .as_ref()
                    .and_then(|h| h.health.as_ref())
                    .map(|_| u8::from(!unhealthy(&v.name)).to_string())
            }),
        );
        let i = self.lock();
        table(
            &mut out,
            "skiff_exec_total",
            "counter",
            "Commands started in the VM.",
            i.exec
                .iter()
                .map(|(vm, n)| (format!("vm=\"{}\"", label(vm)), n.to_string()))
                .collect(),
        );
        histograms(
            &mut out,
            "skiff_exec_duration_seconds",
            "Duration of commands, by the API that ran them (commands, exec, run).",
            "api",
            &i.exec_latency,
        );
        histograms(
            &mut out,
            "skiff_boot_duration_seconds",
            "Time from start to ready, by the guest's init (agent, system, own).",
            "init",
            &i.boot_latency,
        );
        table(
            &mut out,
            "skiff_proxy_requests_total",
            "counter",
            "Requests through the reverse proxy by VM and status.",
            i.proxy
                .iter()
                .map(|((vm, code), n)| {
                    (
                        format!("vm=\"{}\",code=\"{code}\"", label(vm)),
                        n.to_string(),
                    )
                })
                .collect(),
        );
        let _ = writeln!(out, "# HELP skiff_proxy_request_duration_seconds Time to the response head through the proxy.\n# TYPE skiff_proxy_request_duration_seconds histogram");
        for (vm, h) in &i.proxy_latency {
            h.render(
                &mut out,
                "skiff_proxy_request_duration_seconds",
                &format!("vm=\"{}\"", label(vm)),
            );
        }
        out
    }
}

/// A histogram family with one label whose values are skiff's own words.
fn histograms(
    out: &mut String,
    name: &str,
    help: &str,
    key: &str,
    by: &BTreeMap<&'static str, Histogram>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (value, h) in by {
        h.render(out, name, &format!("{key}=\"{value}\""));
    }
}

/// The pools' gauges: the size each keeps, and its sandboxes by state.
pub fn render_pools(pools: &[skiff_api::Pool]) -> String {
    let mut out = String::from(
        "# HELP skiff_pool_size Sandboxes the pool keeps ready.\n# TYPE skiff_pool_size gauge\n",
    );
    for p in pools {
        let _ = writeln!(
            out,
            "skiff_pool_size{{pool=\"{}\"}} {}",
            label(&p.name),
            p.size
        );
    }
    out.push_str("# HELP skiff_pool_sandboxes The pool's sandboxes by state.\n# TYPE skiff_pool_sandboxes gauge\n");
    for p in pools {
        for (state, n) in [
            ("ready", p.ready),
            ("sleeping", p.sleeping),
            ("booting", p.booting),
            ("taken", p.taken),
        ] {
            let _ = writeln!(
                out,
                "skiff_pool_sandboxes{{pool=\"{}\",state=\"{state}\"}} {n}",
                label(&p.name)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_have_a_size_and_sandboxes_by_state() {
        let pool = skiff_api::Pool {
            name: "sb".into(),
            template: skiff_spec::VmSpec::with_defaults("sb"),
            size: 3,
            ttl_secs: 60,
            created_at: 0,
            ready: 2,
            sleeping: 5,
            awake: Some(2),
            booting: 1,
            taken: 4,
        };
        let text = render_pools(&[pool]);
        for line in [
            "skiff_pool_size{pool=\"sb\"} 3",
            "skiff_pool_sandboxes{pool=\"sb\",state=\"ready\"} 2",
            "skiff_pool_sandboxes{pool=\"sb\",state=\"sleeping\"} 5",
            "skiff_pool_sandboxes{pool=\"sb\",state=\"booting\"} 1",
            "skiff_pool_sandboxes{pool=\"sb\",state=\"taken\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
    }

    #[test]
    fn a_forgotten_vm_leaves_no_series() {
        let m = Metrics::default();
        for vm in ["web", "run-1"] {
            m.exec_started(vm);
            m.exec_finished("exec", Duration::from_millis(5));
            m.proxied(vm, 200, Duration::from_millis(3));
        }
        m.forget("run-1");
        let i = m.lock();
        assert_eq!(i.exec.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(i.proxy_latency.keys().collect::<Vec<_>>(), ["web"]);
        assert!(i.proxy.keys().all(|(v, _)| v == "web"));
    }

    #[test]
    fn boot_and_command_times_are_histograms_labelled_by_kind_not_by_vm() {
        let m = Metrics::default();
        m.booted("agent", Duration::from_millis(1500));
        m.booted("system", Duration::from_secs(25));
        m.exec_finished("commands", Duration::from_millis(30));
        m.exec_finished("commands", Duration::from_millis(300));
        let text = m.render(&[], |_| false);
        for line in [
            "skiff_boot_duration_seconds_bucket{init=\"agent\",le=\"1\"} 0",
            "skiff_boot_duration_seconds_bucket{init=\"agent\",le=\"2\"} 1",
            "skiff_boot_duration_seconds_bucket{init=\"system\",le=\"20\"} 0",
            "skiff_boot_duration_seconds_bucket{init=\"system\",le=\"30\"} 1",
            "skiff_boot_duration_seconds_count{init=\"system\"} 1",
            "skiff_exec_duration_seconds_bucket{api=\"commands\",le=\"0.05\"} 1",
            "skiff_exec_duration_seconds_bucket{api=\"commands\",le=\"0.5\"} 2",
            "skiff_exec_duration_seconds_count{api=\"commands\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
        assert!(
            !text.contains("vm=\""),
            "no per-VM series without VMs: {text}"
        );
    }
}
