//! `/v1/networks`: managed networks over HTTP.

use crate::http::error::ApiError;
use crate::manager::{Manager, ManagerError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use skiff_api::{CreateNetwork, Network, PruneReport};
use std::sync::Arc;

pub async fn list(State(m): State<Arc<Manager>>) -> Result<Json<Vec<Network>>, ApiError> {
    let all = m.store.networks().map_err(ManagerError::from)?;
    Ok(Json(all.into_iter().map(Network::from).collect()))
}

pub async fn create(
    State(m): State<Arc<Manager>>,
    Json(body): Json<CreateNetwork>,
) -> Result<(StatusCode, Json<Network>), ApiError> {
    let net = m
        .create_network(&body.name, &body.subnet, body.dns.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(net.into())))
}

pub async fn remove(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    m.remove_network(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn prune(State(m): State<Arc<Manager>>) -> Result<Json<PruneReport>, ApiError> {
    Ok(Json(m.prune_networks().await?))
}
