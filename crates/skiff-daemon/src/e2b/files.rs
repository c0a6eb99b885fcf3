//! envd's `/files`: a file's bytes streamed out of the sandbox (`GET`),
//! and files streamed in (`POST`, multipart or octet-stream), of any size,
//! through the agent's own reads and writes.

use super::connect::RpcError;
use super::envd::authorize;
use super::filesystem::fs_call;
use super::store::E2bSandbox;
use super::E2b;
use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use skiff_proto::fs::{FsError, FsErrorKind, FsOp};
use std::sync::Arc;

pub fn routes(router: Router<Arc<E2b>>) -> Router<Arc<E2b>> {
    router.route(
        "/files",
        get(read)
            .post(write)
            // A file may be of any size: the guest's disk bounds it.
            .layer(axum::extract::DefaultBodyLimit::disable()),
    )
}

#[derive(Deserialize, Default)]
struct FileQuery {
    path: Option<String>,
    username: Option<String>,
}

/// envd's error body for `/files`: `{"code": N, "message": "…"}`.
fn http_error(e: &RpcError) -> Response {
    let status = e.code.status();
    let body = json!({ "code": status.as_u16(), "message": e.message });
    (status, axum::Json(body)).into_response()
}

/// A failed file operation with the status envd's `/files` gives it (the
/// SDK tells full disks, unknown users and missing files apart by it).
fn fs_error(e: FsError) -> Response {
    let status = match e.kind {
        FsErrorKind::NotFound => StatusCode::NOT_FOUND,
        FsErrorKind::AlreadyExists => StatusCode::CONFLICT,
        FsErrorKind::NotADirectory | FsErrorKind::IsADirectory | FsErrorKind::Invalid => {
            StatusCode::BAD_REQUEST
        }
        FsErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        FsErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        FsErrorKind::UnknownUser => StatusCode::UNAUTHORIZED,
        FsErrorKind::Other => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = json!({ "code": status.as_u16(), "message": e.message });
    (status, axum::Json(body)).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    let body = json!({ "code": 400, "message": message.into() });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

async fn read(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Query(q): Query<FileQuery>,
) -> Response {
    let sandbox = match authorize(&e2b, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(path) = q.path.filter(|p| !p.is_empty()) else {
        return bad_request("path is missing: GET /files?path=PATH");
    };
    let mut conn = match fs_call(&e2b, &sandbox, q.username, FsOp::Read { path }).await {
        Ok(c) => c,
        Err(e) => return http_error(&e),
    };
    // Chunked, without a length: the guest's stat of a file says nothing
    // of /proc's, nor of one that changes as it is read.
    if let Err(e) = crate::guest_fs::info(&mut conn).await {
        return fs_error(e);
    }
    let mut r = Response::new(Body::from_stream(crate::guest_fs::read_stream(conn)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// Stream `chunks` into a new file at `path` in the sandbox; its entry.
async fn put<S, E>(
    e2b: &E2b,
    sandbox: &E2bSandbox,
    user: Option<String>,
    path: String,
    chunks: S,
) -> Result<Value, Response>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut conn = fs_call(e2b, sandbox, user, FsOp::Write { path })
        .await
        .map_err(|e| http_error(&e))?;
    match crate::guest_fs::write_stream(&mut conn, chunks).await {
        Ok(i) => Ok(json!({ "path": i.path, "name": i.name, "type": "file" })),
        Err(e) => Err(fs_error(e)),
    }
}

async fn write(State(e2b): State<Arc<E2b>>, Query(q): Query<FileQuery>, req: Request) -> Response {
    let sandbox = match authorize(&e2b, req.headers()) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let gzipped = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str())
    {
        None => false,
        Some(Ok(v)) if v.eq_ignore_ascii_case("identity") => false,
        Some(Ok(v)) if v.eq_ignore_ascii_case("gzip") => true,
        Some(v) => {
            return bad_request(format!(
                "Content-Encoding {:?} is not one /files takes (gzip, or none)",
                v.unwrap_or("")
            ))
        }
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let written = if gzipped && !content_type.starts_with("application/octet-stream") {
        return bad_request(
            "a gzip upload must be application/octet-stream (as E2B's SDKs send it)",
        );
    } else if content_type.starts_with("multipart/form-data") {
        let multipart =
            match <Multipart as axum::extract::FromRequest<()>>::from_request(req, &()).await {
                Ok(m) => m,
                Err(e) => return bad_request(e.body_text()),
            };
        write_parts(&e2b, &sandbox, q, multipart).await
    } else if content_type.starts_with("application/octet-stream") {
        let Some(path) = q.path.filter(|p| !p.is_empty()) else {
            return bad_request("path is missing: POST /files?path=PATH");
        };
        let body = req.into_body().into_data_stream();
        if gzipped {
            put(&e2b, &sandbox, q.username, path, Box::pin(gunzip(body))).await
        } else {
            put(&e2b, &sandbox, q.username, path, body).await
        }
        .map(|v| vec![v])
    } else {
        return bad_request(format!("Content-Type {content_type:?} is not one /files takes (multipart/form-data or application/octet-stream)"));
    };
    match written {
        Ok(entries) => (StatusCode::OK, axum::Json(Value::Array(entries))).into_response(),
        Err(r) => r,
    }
}

/// The bytes of a gzip body, decompressed as they come: never held whole,
/// so a small body that inflates hugely only fills the guest's disk,
/// which a plain upload could as well.
fn gunzip<S>(body: S) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>
where
    S: futures_util::Stream<Item = Result<Bytes, axum::Error>>,
{
    use futures_util::TryStreamExt;
    let compressed = tokio_util::io::StreamReader::new(body.map_err(std::io::Error::other));
    let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(compressed);
    // Every member, as gzip and Go's reader take them (not only the first).
    decoder.multiple_members(true);
    tokio_util::io::ReaderStream::with_capacity(decoder, 64 * 1024)
}

/// Each part named `file` is a file, its filename the target path (or
/// `?path=` when there is one part).
async fn write_parts(
    e2b: &E2b,
    sandbox: &E2bSandbox,
    q: FileQuery,
    mut multipart: Multipart,
) -> Result<Vec<Value>, Response> {
    let mut written = Vec::new();
    let mut seen = std::collections::HashSet::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(bad_request(e.body_text())),
        };
        if field.name() != Some("file") {
            continue;
        }
        let path = match (
            q.path.as_deref().filter(|p| !p.is_empty()),
            field.file_name(),
        ) {
            (Some(p), _) if written.is_empty() => p.to_owned(),
            (_, Some(name)) if !name.is_empty() => name.to_owned(),
            _ => {
                return Err(bad_request(
                    "a part has no filename: give each file its path as its filename",
                ))
            }
        };
        if !seen.insert(path.clone()) {
            return Err(bad_request(format!("{path} is given twice")));
        }
        let field = Box::pin(field);
        written.push(put(e2b, sandbox, q.username.clone(), path, field).await?);
    }
    if written.is_empty() {
        return Err(bad_request("the upload holds no part named \"file\""));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;

    async fn gzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        async_compression::tokio::bufread::GzipEncoder::new(data)
            .read_to_end(&mut out)
            .await
            .expect("gzip");
        out
    }

    /// The body in chunks of `size` bytes, as a client may send it.
    fn chunked(
        data: Vec<u8>,
        size: usize,
    ) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> {
        let chunks: Vec<_> = data
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(chunks)
    }

    async fn collect(
        s: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>,
    ) -> Result<Vec<u8>, std::io::Error> {
        let mut s = Box::pin(s);
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn gzip_uploads_are_inflated_as_they_come() {
        let text: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let packed = gzip(&text).await;
        let inflated = collect(gunzip(chunked(packed.clone(), 7))).await;
        assert_eq!(inflated.expect("inflated"), text);
        // Two members (`cat a.gz b.gz`) are both of the file.
        let mut two = packed.clone();
        two.extend(gzip(b"and more").await);
        let inflated = collect(gunzip(chunked(two, 1000))).await;
        let mut both = text.clone();
        both.extend_from_slice(b"and more");
        assert_eq!(inflated.expect("inflated"), both);
        // A cut-off or corrupt body is an error, never a shorter file.
        let cut = packed[..packed.len() / 2].to_vec();
        assert!(collect(gunzip(chunked(cut, 4096))).await.is_err());
        let junk = b"not gzip at all".to_vec();
        assert!(collect(gunzip(chunked(junk, 4))).await.is_err());
    }
}
