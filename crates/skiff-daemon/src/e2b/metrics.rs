//! E2B's `GET /sandboxes/{id}/metrics`: the guest's CPU share, memory and
//! root file system, measured by its agent when asked. E2B keeps a series
//! sampled every 5 s; skiff answers one sample, taken now, when the asked
//! window holds now (and none when it does not, or the sandbox sleeps).

use super::control::{owned, owner};
use super::filesystem::fs_call;
use super::store::E2bSandbox;
use super::{rfc3339, ApiError, E2b};
use crate::store::VmState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use skiff_proto::fs::{FsOp, GuestUsage};
use std::sync::Arc;
use std::time::Duration;

/// The window the CPU share is measured over.
const CPU_WINDOW: Duration = Duration::from_millis(250);

#[derive(Deserialize, Default)]
pub(super) struct MetricsQuery {
    /// Unix seconds.
    start: Option<i64>,
    end: Option<i64>,
}

pub(super) async fn metrics(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<MetricsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let owner = owner(&e2b, &headers)?;
    let sandbox = owned(&e2b, &owner, &id)?;
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let now = crate::store::now();
    // The window is in whole seconds: a call's own `end` may be a moment old.
    let in_window = q.start.is_none_or(|s| s <= now) && q.end.is_none_or(|e| e >= now - 5);
    let running = e2b
        .m
        .inspect(&sandbox.vm)
        .is_ok_and(|r| r.state == VmState::Running);
    if !in_window || !running {
        return Ok(Json(json!([])));
    }
    let first = sample(&e2b, &sandbox).await?;
    tokio::time::sleep(CPU_WINDOW).await;
    let second = sample(&e2b, &sandbox).await?;
    Ok(Json(json!([metric(&first, &second, now)])))
}

async fn sample(e2b: &E2b, sandbox: &E2bSandbox) -> Result<GuestUsage, ApiError> {
    let op = FsOp::Usage { path: "/".into() };
    let mut conn = fs_call(e2b, sandbox, None, op)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.message))?;
    crate::guest_fs::usage(&mut conn)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.message))
}

/// E2B's `SandboxMetric` from two samples `CPU_WINDOW` apart. The guest's
/// counters are only trusted to be numbers: a share outside 0..=100 (a
/// counter that went back) is clamped.
fn metric(first: &GuestUsage, second: &GuestUsage, now: i64) -> Value {
    let busy = second.cpu_busy_ticks.saturating_sub(first.cpu_busy_ticks);
    let total = second.cpu_total_ticks.saturating_sub(first.cpu_total_ticks);
    let pct = if total == 0 {
        0.0
    } else {
        (busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
    };
    json!({
        "timestamp": rfc3339(now),
        "timestampUnix": now,
        "cpuCount": second.cpus,
        "cpuUsedPct": (pct * 100.0).round() / 100.0,
        "memUsed": second.mem_total.saturating_sub(second.mem_available),
        "memTotal": second.mem_total,
        "memCache": second.mem_cached,
        "diskUsed": second.disk_used,
        "diskTotal": second.disk_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(busy: u64, total: u64) -> GuestUsage {
        GuestUsage {
            cpus: 2,
            cpu_busy_ticks: busy,
            cpu_total_ticks: total,
            mem_total: 1000,
            mem_available: 400,
            mem_cached: 100,
            disk_total: 5000,
            disk_used: 1200,
        }
    }

    #[test]
    fn a_metric_is_e2b_s_shape_from_two_samples() {
        let m = metric(&usage(100, 1000), &usage(130, 1040), 1_700_000_000);
        assert_eq!(m["cpuUsedPct"], 75.0);
        assert_eq!(m["memUsed"], 600);
        assert_eq!(m["diskUsed"], 1200);
        assert_eq!(m["cpuCount"], 2);
        assert_eq!(m["timestamp"], "2023-11-14T22:13:20Z");
        // Counters that went back (a hostile guest) give a share, not a panic.
        let m = metric(&usage(500, 1000), &usage(100, 900), 0);
        assert_eq!(m["cpuUsedPct"], 0.0);
        let m = metric(&usage(0, 0), &usage(900, 10), 0);
        assert_eq!(m["cpuUsedPct"], 100.0);
    }
}
