//! `GET/DELETE /v1/vms/{name}/commands/{id}`: background commands.

use crate::http::error::{api_error, ApiError};
use crate::manager::Manager;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use skiff_api::{CommandState, WaitQuery};
use std::sync::Arc;
use std::time::Duration;

fn missing(vm: &str, id: &str) -> ApiError {
    api_error(
        StatusCode::NOT_FOUND,
        format!("no background command {id:?} in VM {vm:?}"),
    )
}

pub async fn get(
    State(m): State<Arc<Manager>>,
    Path((vm, id)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<CommandState>, ApiError> {
    let wait = q
        .wait
        .filter(|s| *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)));
    let state = m.background.state(&vm, &id, wait).await;
    state.map(Json).ok_or_else(|| missing(&vm, &id))
}

pub async fn kill(
    State(m): State<Arc<Manager>>,
    Path((vm, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if m.background.kill(&vm, &id) {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(missing(&vm, &id))
    }
}
