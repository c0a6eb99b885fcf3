//! `/v1/pools` and sandboxes' time to live over HTTP.

use crate::http::error::ApiError;
use crate::manager::pools::{PoolInfo, Sandbox};
use crate::manager::Manager;
use crate::poolstore::PoolRecord;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use skiff_api::{CreatePool, ResizeBody, TakeBody, TtlBody};
use std::sync::Arc;
use std::time::Duration;

pub async fn list(State(m): State<Arc<Manager>>) -> Result<Json<Vec<PoolInfo>>, ApiError> {
    Ok(Json(m.pool_infos()?))
}

pub async fn create(
    State(m): State<Arc<Manager>>,
    Json(body): Json<CreatePool>,
) -> Result<(StatusCode, Json<PoolRecord>), ApiError> {
    if let Some(image) = &body.image {
        m.ensure_image(image).await?;
    }
    Ok((StatusCode::CREATED, Json(m.create_pool(&body)?)))
}

pub async fn remove(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    m.remove_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn resize(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Json(body): Json<ResizeBody>,
) -> Result<StatusCode, ApiError> {
    m.resize_pool(&name, body.size)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn take(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    body: Option<Json<TakeBody>>,
) -> Result<Json<Sandbox>, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let wait = Duration::from_secs(body.wait_secs.unwrap_or(60).min(600));
    Ok(Json(m.take(&name, body.ttl_secs, wait).await?))
}

pub async fn ttl(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Json(body): Json<TtlBody>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(m.extend_ttl(&name, body.seconds)?))
}
