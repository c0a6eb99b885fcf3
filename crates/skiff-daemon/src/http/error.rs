//! The API's error answer: a status code and an [`ErrorBody`] saying what
//! was wrong. Its own module, below the handlers and the router, so that
//! handler modules do not import the router's module back.

use crate::manager::ManagerError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use skiff_api::ErrorBody;

pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let status = match &e {
            ManagerError::NotFound(_) | ManagerError::Missing(_) => StatusCode::NOT_FOUND,
            ManagerError::Exists(_)
            | ManagerError::WrongState { .. }
            | ManagerError::Conflict(_) => StatusCode::CONFLICT,
            ManagerError::Forbidden(_) => StatusCode::FORBIDDEN,
            // The registry failed us: 502; the image is not one skiff can
            // run, or the reference is wrong: 422; the cache itself: 500.
            ManagerError::Pull { source, .. } => match source {
                skiff_oci::OciError::Unsupported { .. }
                | skiff_oci::OciError::BadReference { .. }
                | skiff_oci::OciError::HostileLayer { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                skiff_oci::OciError::Io { .. } | skiff_oci::OciError::Busy => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::BAD_GATEWAY,
            },
            ManagerError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ManagerError::StartFailed { .. } | ManagerError::Agent { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ManagerError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ManagerError::Pause(e) => match e {
                crate::manager::pause::PauseError::NotPausable(_) => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        // The whole chain: what failed and each cause, on one line.
        ApiError(status, crate::support::error_chain(&e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

pub fn api_error(status: StatusCode, msg: String) -> ApiError {
    ApiError(status, msg)
}
