//! Saving a pausable VM's whole state (memory, devices) to a file, and
//! starting a new QEMU from it.
//!
//! QEMU's migration stream goes through a pipe handed over QMP (`getfd`),
//! so QEMU needs no access to the file, and the host hashes the bytes as
//! they pass. The file is written under a temporary name and renamed once
//! complete, next to a manifest with its size, SHA-256 and the versions
//! that made it; a restore checks all of them and starts the guest only
//! when the bytes QEMU loaded are the ones saved.

use crate::qmp::{Qmp, QmpError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bump when what a snapshot holds changes incompatibly.
pub const FORMAT: u32 = 1;

/// What QEMU is started with, after its usual arguments, to take a
/// snapshot in: wait for the stream on QMP, and stay stopped once loaded.
pub const INCOMING_ARGS: [&str; 3] = ["-S", "-incoming", "defer"];

/// What was saved, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The skiff that saved it (its agent protocol, its bridge).
    pub skiff: String,
    /// QEMU's version (`query-version`): another QEMU may not load it.
    pub qemu: String,
    pub size: u64,
    pub sha256: String,
    /// How long the save took, in milliseconds.
    pub save_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("cannot write the snapshot {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the snapshot {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("QEMU could not save the VM: {0}")]
    SaveFailed(String),
    #[error("QEMU could not load the snapshot: {0}")]
    LoadFailed(String),
    #[error("the snapshot {} is damaged: {what}; it cannot be resumed (stop the VM to discard it)", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("the snapshot was made by {made_by}, and this is {this}; resume it with that version, or stop the VM to discard it")]
    OtherVersion { made_by: String, this: String },
    #[error("QEMU did not {what} within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
}

/// The manifest's path for a snapshot file.
pub fn manifest_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// Read and check a snapshot's manifest against the file and this skiff.
pub fn check(file: &Path) -> Result<Manifest, SnapshotError> {
    let mpath = manifest_path(file);
    let text = std::fs::read_to_string(&mpath).map_err(|source| SnapshotError::Read {
        path: mpath.clone(),
        source,
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| SnapshotError::Corrupt {
        path: mpath.clone(),
        what: format!("its manifest is not valid ({e})"),
    })?;
    let this = format!("skiff {} (format {FORMAT})", env!("CARGO_PKG_VERSION"));
    let made_by = format!("skiff {} (format {})", manifest.skiff, manifest.format);
    if made_by != this {
        return Err(SnapshotError::OtherVersion { made_by, this });
    }
    let size = std::fs::metadata(file)
        .map_err(|source| SnapshotError::Read {
            path: file.to_owned(),
            source,
        })?
        .len();
    if size != manifest.size {
        return Err(SnapshotError::Corrupt {
            path: file.to_owned(),
            what: format!("it has {size} bytes, {} were saved", manifest.size),
        });
    }
    Ok(manifest)
}

async fn version(qmp: &mut Qmp) -> Result<String, QmpError> {
    let v = qmp.execute("query-version", None).await?;
    let q = &v["qemu"];
    Ok(format!(
        "QEMU {}.{}.{}",
        q["major"].as_u64().unwrap_or(0),
        q["minor"].as_u64().unwrap_or(0),
        q["micro"].as_u64().unwrap_or(0)
    ))
}

/// Stop the VM, save it to `file`, and make QEMU exit. On an error the VM
/// runs again and no file is left.
pub async fn save(qmp_socket: &Path, file: &Path) -> Result<Manifest, SnapshotError> {
    let started = Instant::now();
    let mut qmp = Qmp::connect(qmp_socket).await?;
    let qemu = version(&mut qmp).await?;
    qmp.execute("stop", None).await?;
    let tmp = file.with_extension("partial");
    match save_stopped(&mut qmp, &tmp).await {
        Ok((size, sha256)) => {
            let manifest = Manifest {
                format: FORMAT,
                skiff: env!("CARGO_PKG_VERSION").to_owned(),
                qemu,
                size,
                sha256,
                save_ms: started.elapsed().as_millis() as u64,
            };
            if let Err(e) = publish(&tmp, file, &manifest) {
                let _ = std::fs::remove_file(&tmp);
                let _ = qmp.execute("cont", None).await;
                return Err(e);
            }
            // The VM is saved: this QEMU has done its part.
            let _ = qmp.execute("quit", None).await;
            Ok(manifest)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            undo_on(&mut qmp).await;
            Err(e)
        }
    }
}

/// Undo a save that did not finish (its daemon died, or it timed out): the
/// guest runs on. Best effort, bounded.
pub async fn undo_save(qmp_socket: &Path) {
    let undo = async {
        if let Ok(mut qmp) = Qmp::connect(qmp_socket).await {
            undo_on(&mut qmp).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), undo).await;
}

async fn undo_on(qmp: &mut Qmp) {
    let _ = qmp.execute("migrate_cancel", None).await;
    // Unused if the migration never started: the copy's pipe ends.
    let _ = qmp
        .execute("closefd", Some(json!({ "fdname": "skiff-save" })))
        .await;
    let _ = qmp.execute("cont", None).await;
}

/// The file, then its manifest, each complete on disk before its rename.
fn publish(tmp: &Path, file: &Path, manifest: &Manifest) -> Result<(), SnapshotError> {
    let mpath = manifest_path(file);
    let write = |source| SnapshotError::Write {
        path: mpath.clone(),
        source,
    };
    let mtmp = mpath.with_extension("partial");
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| write(io::Error::other(e)))?;
    let mut f = File::create(&mtmp).map_err(write)?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(write)?;
    std::fs::rename(tmp, file).map_err(|source| SnapshotError::Write {
        path: file.to_owned(),
        source,
    })?;
    std::fs::rename(&mtmp, &mpath).map_err(write)
}

async fn save_stopped(qmp: &mut Qmp, tmp: &Path) -> Result<(u64, String), SnapshotError> {
    let (read, write) = pipe()?;
    qmp.send_fd("skiff-save", write.as_fd()).await?;
    drop(write);
    let out = File::create(tmp).map_err(|source| SnapshotError::Write {
        path: tmp.to_owned(),
        source,
    })?;
    let path = tmp.to_owned();
    let copy = tokio::task::spawn_blocking(move || store_stream(File::from(read), out, &path));
    qmp.execute("migrate", Some(json!({ "uri": "fd:skiff-save" })))
        .await?;
    let timeout = Duration::from_secs(300);
    let deadline = Instant::now() + timeout;
    loop {
        let status = qmp.execute("query-migrate", None).await?;
        match status["status"].as_str().unwrap_or("") {
            "completed" => break,
            "failed" | "cancelled" => {
                let why = status["error-desc"].as_str().unwrap_or("no reason given");
                return Err(SnapshotError::SaveFailed(why.to_owned()));
            }
            _ if copy.is_finished() => break,
            _ if Instant::now() > deadline => {
                return Err(SnapshotError::Timeout {
                    what: "save the VM",
                    timeout,
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let copied = copy
        .await
        .map_err(|e| SnapshotError::SaveFailed(e.to_string()))?;
    copied
}

/// Which side of a copy failed.
enum CopyFailed {
    Read(io::Error),
    Write(io::Error),
}

/// Copy `from` to `to`, returning the size and SHA-256 of what passed.
fn copy_hashed(mut from: File, to: &mut File) -> Result<(u64, String), CopyFailed> {
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyFailed::Read(e)),
        };
        hash.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(CopyFailed::Write)?;
        size += n as u64;
    }
    Ok((size, hex(&hash.finalize())))
}

/// Save QEMU's stream into the file (fsynced).
fn store_stream(from: File, mut to: File, path: &Path) -> Result<(u64, String), SnapshotError> {
    let write = |source| SnapshotError::Write {
        path: path.to_owned(),
        source,
    };
    let copied = copy_hashed(from, &mut to).map_err(|e| match e {
        CopyFailed::Read(e) | CopyFailed::Write(e) => write(e),
    })?;
    to.sync_all().map_err(write)?;
    Ok(copied)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SnapshotError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SnapshotError::Write {
        path: PathBuf::from("(pipe)"),
        source: e.into(),
    })
}

/// Load `file` into a QEMU started with [`INCOMING_ARGS`] and let the
/// guest run, once the bytes loaded match the manifest.
pub async fn restore(
    qmp_socket: &Path,
    file: &Path,
    manifest: &Manifest,
    timeout: Duration,
) -> Result<(), SnapshotError> {
    let deadline = Instant::now() + timeout;
    let mut qmp = loop {
        match Qmp::connect(qmp_socket).await {
            Ok(q) => break q,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let this = version(&mut qmp).await?;
    if this != manifest.qemu {
        return Err(SnapshotError::OtherVersion {
            made_by: manifest.qemu.clone(),
            this,
        });
    }
    let (read, write) = pipe()?;
    qmp.send_fd("skiff-restore", read.as_fd()).await?;
    drop(read);
    let input = File::open(file).map_err(|source| SnapshotError::Read {
        path: file.to_owned(),
        source,
    })?;
    let path = file.to_owned();
    let feed = tokio::task::spawn_blocking(move || feed_stream(input, File::from(write), &path));
    qmp.execute(
        "migrate-incoming",
        Some(json!({ "uri": "fd:skiff-restore" })),
    )
    .await?;
    let (size, sha256) = feed
        .await
        .map_err(|e| SnapshotError::LoadFailed(e.to_string()))??;
    if size != manifest.size || sha256 != manifest.sha256 {
        return Err(SnapshotError::Corrupt {
            path: file.to_owned(),
            what: "its checksum does not match the one saved".into(),
        });
    }
    loop {
        let status = qmp.execute("query-status", None).await?;
        match status["status"].as_str().unwrap_or("") {
            // Loaded, and held by -S until the checksum was right.
            "paused" => break,
            "inmigrate" | "prelaunch" => {}
            "running" => return Ok(()),
            other => {
                return Err(SnapshotError::LoadFailed(format!(
                    "QEMU is {other:?} after loading"
                )))
            }
        }
        if Instant::now() > deadline {
            return Err(SnapshotError::Timeout {
                what: "load the snapshot",
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    qmp.execute("cont", None).await?;
    Ok(())
}

/// Copy the file into QEMU's pipe, returning the size and SHA-256 of what
/// went in.
fn feed_stream(from: File, mut to: File, path: &Path) -> Result<(u64, String), SnapshotError> {
    copy_hashed(from, &mut to).map_err(|e| match e {
        CopyFailed::Read(source) => SnapshotError::Read {
            path: path.to_owned(),
            source,
        },
        // QEMU stopped reading: it refused the stream.
        CopyFailed::Write(e) => {
            SnapshotError::LoadFailed(format!("QEMU stopped reading the snapshot ({e})"))
        }
    })
}
