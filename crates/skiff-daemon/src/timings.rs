//! How long each phase of a run took.

use serde::Serialize;
use skiff_proto::BootTimes;
use std::time::Duration;

#[derive(Debug, Default, Clone)]
pub struct Timings {
    pub image: Duration,
    pub image_built: bool,
    pub launch: Duration,
    pub boot: Duration,
    pub guest: Option<BootTimes>,
    pub exec: Duration,
    pub teardown: Duration,
    pub total: Duration,
}

/// The machine-readable form, in milliseconds.
#[derive(Debug, Serialize)]
pub struct TimingsJson {
    pub image_ms: f64,
    pub image_built: bool,
    pub launch_ms: f64,
    pub boot_ms: f64,
    pub guest_kernel_to_init_ms: Option<u64>,
    pub guest_init_ms: Option<u64>,
    pub guest_kernel_to_ready_ms: Option<u64>,
    pub exec_ms: f64,
    pub teardown_ms: f64,
    pub total_ms: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Timings {
    pub fn to_json(&self) -> TimingsJson {
        TimingsJson {
            image_ms: ms(self.image),
            image_built: self.image_built,
            launch_ms: ms(self.launch),
            boot_ms: ms(self.boot),
            guest_kernel_to_init_ms: self.guest.map(|g| g.init_start_ms),
            guest_init_ms: self
                .guest
                .map(|g| g.init_done_ms.saturating_sub(g.init_start_ms)),
            guest_kernel_to_ready_ms: self.guest.map(|g| g.ready_ms),
            exec_ms: ms(self.exec),
            teardown_ms: ms(self.teardown),
            total_ms: ms(self.total),
        }
    }

    /// The human form: one phase per line.
    pub fn render(&self) -> String {
        let mut s = String::from("skiff: timings\n");
        let image_note = if self.image_built {
            " (built)"
        } else {
            " (cached)"
        };
        s += &format!(
            "  image               {:>9.1} ms{image_note}\n",
            ms(self.image)
        );
        s += &format!(
            "  launch              {:>9.1} ms  (vsock backend + QEMU started)\n",
            ms(self.launch)
        );
        s += &format!("  boot to agent ready {:>9.1} ms\n", ms(self.boot));
        if let Some(g) = self.guest {
            s += &format!(
                "    guest: kernel start to /init {:>6} ms\n",
                g.init_start_ms
            );
            s += &format!(
                "    guest: /init setup (mounts, modules) {:>6} ms\n",
                g.init_done_ms.saturating_sub(g.init_start_ms)
            );
            s += &format!("    guest: kernel start to ready {:>6} ms\n", g.ready_ms);
        }
        s += &format!("  exec                {:>9.1} ms\n", ms(self.exec));
        s += &format!("  teardown            {:>9.1} ms\n", ms(self.teardown));
        s += &format!("  total               {:>9.1} ms\n", ms(self.total));
        s
    }
}
