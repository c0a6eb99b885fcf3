//! `skiff cp`: files and directories between the host and a running VM,
//! streamed through the daemon and the guest agent, keeping modes.

use crate::client::Client;
use crate::frames::{self, FrameReader};
use anyhow::{bail, Context, Result};
use serde_json::json;
use skiff_proto::copy::{item_name, send_tree, Extractor};
use skiff_proto::{ExitStatus, Message};
use std::path::Path;

/// `NAME:/path` names a path in a VM; anything else is a host path (write
/// `./a:b` for a host file whose name has a colon).
fn guest_ref(arg: &str) -> Option<(&str, &str)> {
    let (name, path) = arg.split_once(':')?;
    (skiff_spec::check_name(name).is_ok() && !name.contains('/')).then_some((name, path))
}

pub async fn cp(c: &Client, src: &str, dst: &str) -> Result<i32> {
    match (guest_ref(src), guest_ref(dst)) {
        (None, Some((name, path))) => upload(c, Path::new(src), name, path).await,
        (Some((name, path)), None) => download(c, name, path, Path::new(dst)).await,
        (Some(_), Some(_)) => bail!("copy between two VMs is not supported; copy through the host"),
        (None, None) => bail!(
            "one side must be a VM path, NAME:/path (for example: skiff cp ./a.txt web:/tmp/)"
        ),
    }
}

fn check_guest_path(path: &str) -> Result<()> {
    if !path.starts_with('/') {
        bail!("{path:?} is not an absolute guest path; write NAME:/path");
    }
    Ok(())
}

async fn upload(c: &Client, local: &Path, name: &str, path: &str) -> Result<i32> {
    check_guest_path(path)?;
    std::fs::symlink_metadata(local).with_context(|| format!("cannot copy {}", local.display()))?;
    let io = c
        .upgrade(&format!("/v1/vms/{name}/copy-in"), json!({ "path": path }))
        .await?;
    let (r, mut w) = tokio::io::split(io);
    let mut reader = FrameReader::new(r);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(8);
    let local_owned = local.to_owned();
    let walker = tokio::task::spawn_blocking(move || {
        send_tree(&local_owned, &mut |m| {
            tx.blocking_send(m)
                .map_err(|_| std::io::Error::other("the copy was cancelled"))
        })
    });
    let mut sending = true;
    loop {
        tokio::select! {
            m = rx.recv(), if sending => match m {
                Some(m) => {
                    // If the guest gave up (disk full, say), the daemon closes
                    // the connection after its error: read that error instead
                    // of reporting a broken pipe.
                    if frames::send(&mut w, &m).await.is_err() {
                        sending = false;
                        rx.close();
                    }
                }
                None => sending = false,
            },
            reply = reader.recv() => match reply? {
                Some(Message::Exited(ExitStatus::Code(0))) => break,
                Some(Message::Error(e)) => bail!("copy to {name}:{path} failed: {e}"),
                Some(other) => bail!("unexpected {} message from the daemon", other.name()),
                None => bail!("the daemon closed the connection before the copy finished"),
            },
        }
    }
    walker.await.context("the copy task failed")??;
    Ok(0)
}

async fn download(c: &Client, name: &str, path: &str, local: &Path) -> Result<i32> {
    check_guest_path(path)?;
    // Check the destination before asking the guest for anything. The guest
    // may send only the item asked for: entries named otherwise are refused.
    let item = item_name(Path::new(path));
    let mut extractor = Extractor::new(local, Some(&item))
        .with_context(|| format!("cannot copy into {}", local.display()))?;
    let io = c
        .upgrade(&format!("/v1/vms/{name}/copy-out"), json!({ "path": path }))
        .await?;
    let (r, _w) = tokio::io::split(io);
    let mut reader = FrameReader::new(r);
    loop {
        match reader.recv().await? {
            Some(Message::Error(e)) => bail!("copy from {name}:{path} failed: {e}"),
            Some(m) => {
                // The guest is untrusted: the extractor refuses entries
                // outside the item, writes through symlinks, setuid bits
                // and wrong sizes.
                if extractor
                    .accept(m)
                    .with_context(|| format!("refusing what {name} sent"))?
                {
                    return Ok(0);
                }
            }
            None => bail!("the daemon closed the connection before the copy finished"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::guest_ref;

    #[test]
    fn vm_paths_are_told_from_host_paths() {
        assert_eq!(guest_ref("web:/tmp/x"), Some(("web", "/tmp/x")));
        assert_eq!(guest_ref("./web:/tmp/x"), None);
        assert_eq!(guest_ref("/abs/a:b"), None);
        assert_eq!(guest_ref("plain.txt"), None);
        assert_eq!(guest_ref("Web:/x"), None, "not a VM name");
    }
}
