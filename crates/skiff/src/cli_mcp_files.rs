//! The file tools of `skiff mcp`: done by the guest agent through the
//! daemon's files API (`/v1/vms/{name}/files…`), not by a shell in the
//! guest, so they work on any image and on any bytes.

use crate::client::Client;
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;

/// A query value with everything but unreserved characters escaped.
pub(crate) fn escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Entries one `list_files` answer shows.
const MAX_LISTED: usize = 1000;

fn files_path(vm: &str, op: &str, path: &str) -> String {
    format!("/v1/vms/{vm}/files{op}?path={}", escaped(path))
}

/// At most `cap` bytes of the file at `path`, as text, saying how much
/// was left out. Only what is shown is read from the guest.
pub(crate) async fn read(client: &Client, vm: &str, path: &str, cap: usize) -> Result<String> {
    let info: skiff_api::FileEntry = serde_json::from_slice(
        &client
            .call(Method::GET, &files_path(vm, "/info", path), None)
            .await?,
    )
    .context("the daemon's answer is not a file entry")?;
    if info.kind == "dir" {
        anyhow::bail!("{path} is a directory: list it with list_files");
    }
    let mut body = client.stream(&files_path(vm, "", path)).await?;
    let mut content = Vec::new();
    let mut cut = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the file's read was cut off")?;
        if let Some(data) = frame.data_ref() {
            let room = cap - content.len();
            content.extend_from_slice(&data[..room.min(data.len())]);
            if data.len() > room {
                // The rest is not shown: stop reading (the connection goes).
                cut = true;
                break;
            }
        }
    }
    let mut text = String::from_utf8_lossy(&content).into_owned();
    if cut {
        // A file of /proc says size 0 and has more.
        match info.size.checked_sub(cap as u64).filter(|n| *n > 0) {
            Some(more) => text.push_str(&format!("\n[... {more} more bytes not shown]")),
            None => text.push_str("\n[... more not shown]"),
        }
    }
    Ok(text)
}

/// Write `content` to `path` (its missing directories made), replacing
/// the file in one step.
pub(crate) async fn write(client: &Client, vm: &str, path: &str, content: &str) -> Result<String> {
    let body = client
        .send_bytes(
            Method::PUT,
            &files_path(vm, "", path),
            Bytes::copy_from_slice(content.as_bytes()),
        )
        .await?;
    let answer = body
        .collect()
        .await
        .context("the daemon's answer was cut off")?;
    let entry: skiff_api::FileEntry = serde_json::from_slice(&answer.to_bytes())
        .context("the daemon's answer is not a file entry")?;
    Ok(format!("wrote {} bytes to {}", entry.size, entry.path))
}

/// A directory's entries, `depth` levels down: one line each, with its
/// kind, size and path.
pub(crate) async fn list(client: &Client, vm: &str, path: &str, depth: u64) -> Result<String> {
    let url = format!(
        "{}&depth={}",
        files_path(vm, "/list", path),
        depth.clamp(1, 8)
    );
    let mut entries: Vec<skiff_api::FileEntry> =
        serde_json::from_slice(&client.call(Method::GET, &url, None).await?)
            .context("the daemon's answer is not a list of entries")?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    if entries.is_empty() {
        return Ok(format!("{path} is empty"));
    }
    let mut lines: Vec<String> = entries
        .iter()
        .take(MAX_LISTED)
        .map(|e| {
            let shown = match &e.target {
                Some(target) => format!("{} -> {target}", e.path),
                None => e.path.clone(),
            };
            format!("{:<7} {:>10}  {shown}", e.kind, e.size)
        })
        .collect();
    if entries.len() > MAX_LISTED {
        lines.push(format!(
            "[... {} more entries not shown]",
            entries.len() - MAX_LISTED
        ));
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_queries_are_escaped() {
        assert_eq!(escaped("/tmp/a b&c=d#e"), "/tmp/a%20b%26c%3Dd%23e");
        assert_eq!(escaped("/tmp/ü"), "/tmp/%C3%BC");
        assert_eq!(
            files_path("vm-1", "/list", "/a?b"),
            "/v1/vms/vm-1/files/list?path=/a%3Fb"
        );
    }
}
