//! `/v1/snapshots`: VMs' saved states by tag, and VMs started from them.

use crate::http::detached;
use crate::http::error::ApiError;
use crate::manager::Manager;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use skiff_api::{CreateSnapshot, Snapshot, StartSnapshot, Vm};
use std::sync::Arc;

pub async fn list(State(m): State<Arc<Manager>>) -> Result<Json<Vec<Snapshot>>, ApiError> {
    Ok(Json(m.snapshots()?))
}

pub async fn create(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Json(body): Json<CreateSnapshot>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    let taken = detached(async move { m.snapshot(&name, &body.tag).await }).await?;
    Ok((StatusCode::CREATED, Json(taken)))
}

pub async fn remove(
    State(m): State<Arc<Manager>>,
    Path(tag): Path<String>,
) -> Result<StatusCode, ApiError> {
    m.remove_snapshot(&tag)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn start(
    State(m): State<Arc<Manager>>,
    Path(tag): Path<String>,
    body: Option<Json<StartSnapshot>>,
) -> Result<(StatusCode, Json<Vm>), ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let rec =
        detached(async move { m.start_from_snapshot(&tag, body.name.as_deref()).await }).await?;
    Ok((StatusCode::CREATED, Json(crate::http::vm(rec))))
}
