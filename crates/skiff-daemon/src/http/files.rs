//! `/v1/vms/{name}/files…`: a VM's files, done by its agent (no shell in
//! the guest needed): read and write of any size, streamed (`GET`/`PUT`
//! `…/files?path=P`), remove (`DELETE`), stat (`…/files/info`), listings
//! with depth (`…/files/list`), `…/files/mkdir` and `…/files/rename`.

use crate::http::error::{api_error, ApiError};
use crate::manager::Manager;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use skiff_api::{FileEntry, FileQuery, MakeDirBody, RenameBody};
use skiff_proto::fs::{FileInfo, FileKind, FsError, FsErrorKind, FsOp};
use std::sync::Arc;

/// Entries one listing answers at most.
const MAX_ENTRIES: usize = 100_000;

/// The status a failed file operation answers with.
fn fs_status(kind: FsErrorKind) -> StatusCode {
    match kind {
        FsErrorKind::NotFound => StatusCode::NOT_FOUND,
        FsErrorKind::AlreadyExists => StatusCode::CONFLICT,
        FsErrorKind::NotADirectory
        | FsErrorKind::IsADirectory
        | FsErrorKind::Invalid
        | FsErrorKind::UnknownUser => StatusCode::BAD_REQUEST,
        FsErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        FsErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        FsErrorKind::Other => StatusCode::BAD_GATEWAY,
    }
}

fn fs_error(e: FsError) -> ApiError {
    api_error(fs_status(e.kind), e.message)
}

pub fn entry(i: FileInfo) -> FileEntry {
    FileEntry {
        name: i.name,
        path: i.path,
        kind: match i.kind {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        }
        .into(),
        size: i.size,
        mode: i.mode,
        owner: i.owner,
        group: i.group,
        modified_ns: i.modified_ns,
        target: i.target,
    }
}

async fn one(
    m: &Arc<Manager>,
    name: &str,
    user: Option<String>,
    op: FsOp,
) -> Result<FileEntry, ApiError> {
    let mut conn = crate::guest_fs::call(m, name, user, op).await?;
    crate::guest_fs::info(&mut conn)
        .await
        .map(entry)
        .map_err(fs_error)
}

pub async fn read(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<Response, ApiError> {
    let mut conn = crate::guest_fs::call(&m, &name, q.user, FsOp::Read { path: q.path }).await?;
    // Chunked, without a length: the guest's stat of a file says nothing
    // of /proc's, nor of one that changes as it is read.
    crate::guest_fs::info(&mut conn).await.map_err(fs_error)?;
    let mut r = Response::new(Body::from_stream(crate::guest_fs::read_stream(conn)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

pub async fn write(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
    req: Request,
) -> Result<Json<FileEntry>, ApiError> {
    let mut conn = crate::guest_fs::call(&m, &name, q.user, FsOp::Write { path: q.path }).await?;
    let body = req.into_body().into_data_stream();
    let i = crate::guest_fs::write_stream(&mut conn, body)
        .await
        .map_err(fs_error)?;
    Ok(Json(entry(i)))
}

pub async fn remove(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<StatusCode, ApiError> {
    let mut conn = crate::guest_fs::call(&m, &name, q.user, FsOp::Remove { path: q.path }).await?;
    crate::guest_fs::end(&mut conn).await.map_err(fs_error)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn info(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<Json<FileEntry>, ApiError> {
    Ok(Json(
        one(&m, &name, q.user, FsOp::Stat { path: q.path }).await?,
    ))
}

pub async fn list(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<Json<Vec<FileEntry>>, ApiError> {
    let depth = q.depth.unwrap_or(1).clamp(1, 64);
    let op = FsOp::List {
        path: q.path,
        depth,
    };
    let mut conn = crate::guest_fs::call(&m, &name, q.user, op).await?;
    let all = crate::guest_fs::entries(&mut conn, MAX_ENTRIES)
        .await
        .map_err(fs_error)?;
    Ok(Json(all.into_iter().map(entry).collect()))
}

pub async fn make_dir(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Json(body): Json<MakeDirBody>,
) -> Result<(StatusCode, Json<FileEntry>), ApiError> {
    let made = one(&m, &name, body.user, FsOp::MakeDir { path: body.path }).await?;
    Ok((StatusCode::CREATED, Json(made)))
}

pub async fn rename(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Json(body): Json<RenameBody>,
) -> Result<Json<FileEntry>, ApiError> {
    let op = FsOp::Rename {
        from: body.from,
        to: body.to,
    };
    Ok(Json(one(&m, &name, body.user, op).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_file_operations_answer_with_what_went_wrong() {
        assert_eq!(fs_status(FsErrorKind::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(fs_status(FsErrorKind::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(
            fs_status(FsErrorKind::IsADirectory),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            fs_status(FsErrorKind::NoSpace),
            StatusCode::INSUFFICIENT_STORAGE
        );
    }
}
