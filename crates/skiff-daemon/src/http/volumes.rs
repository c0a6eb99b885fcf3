//! Named volumes: `GET/POST /v1/volumes`, `DELETE /v1/volumes/{name}`.

use crate::drives::{ensure_image, volume_label, volume_path};
use crate::http::error::{api_error, ApiError};
use crate::manager::{Manager, ManagerError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
pub use skiff_api::{CreateVolume, VolumeInfo};
use std::sync::Arc;

fn users(m: &Manager, name: &str) -> Result<Vec<crate::store::VmRecord>, ApiError> {
    Ok(m.list()?
        .into_iter()
        .filter(|r| r.spec.volumes.iter().any(|v| v.name == name))
        .collect())
}

pub async fn list(State(m): State<Arc<Manager>>) -> Result<Json<Vec<VolumeInfo>>, ApiError> {
    let dir = m.paths.state_dir.join("volumes");
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.filter_map(Result::ok) {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".ext4") else {
                continue;
            };
            let size = e.metadata().map(|md| md.len() / (1024 * 1024)).unwrap_or(0);
            let used_by = users(&m, name)?.into_iter().map(|r| r.name).collect();
            out.push(VolumeInfo {
                name: name.to_owned(),
                size_mib: size,
                used_by,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

pub async fn create(
    State(m): State<Arc<Manager>>,
    body: Result<Json<CreateVolume>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<VolumeInfo>), ApiError> {
    let Json(body) = body.map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {}", e.body_text()),
        )
    })?;
    skiff_spec::check_name(&body.name).map_err(|e| {
        api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("volume name: {e}"),
        )
    })?;
    let size_mib = match &body.size {
        None => 1024,
        Some(s) => skiff_spec::parse_size_mib(s)
            .ok()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| *m >= 16)
            .ok_or_else(|| {
                api_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("size {s:?} is not valid; at least 16 MiB, like \"1G\""),
                )
            })?,
    };
    let path = volume_path(&m.paths, &body.name);
    if path.exists() {
        return Err(api_error(
            StatusCode::CONFLICT,
            format!("a volume named {:?} already exists", body.name),
        ));
    }
    ensure_image(m.host.as_ref(), &path, &volume_label(&body.name), size_mib)
        .map_err(|e| ApiError::from(ManagerError::internal("create the volume", e)))?;
    Ok((
        StatusCode::CREATED,
        Json(VolumeInfo {
            name: body.name,
            size_mib: u64::from(size_mib),
            used_by: Vec::new(),
        }),
    ))
}

pub async fn remove(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let path = volume_path(&m.paths, &name);
    if skiff_spec::check_name(&name).is_err() || !path.exists() {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            format!("no volume named {name:?}"),
        ));
    }
    if let Some(vm) = users(&m, &name)?.into_iter().find(|r| r.state.is_active()) {
        return Err(api_error(
            StatusCode::CONFLICT,
            format!(
                "volume {name:?} is in use by the running VM {:?}; stop it first",
                vm.name
            ),
        ));
    }
    std::fs::remove_file(&path).map_err(|e| {
        ApiError::from(ManagerError::internal(
            format!("remove {}", path.display()),
            e,
        ))
    })?;
    Ok(StatusCode::NO_CONTENT)
}
