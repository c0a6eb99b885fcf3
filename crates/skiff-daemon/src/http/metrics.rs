//! `GET /metrics`: Prometheus text.

use crate::manager::Manager;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::sync::Arc;

pub async fn metrics(State(m): State<Arc<Manager>>) -> impl IntoResponse {
    let vms = m.store.list().unwrap_or_default();
    let pools = m.pool_infos().unwrap_or_default();
    let mut text = m.metrics.render(&vms, |vm| m.is_unhealthy(vm));
    text.push_str(&crate::metrics::render_pools(&pools));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
