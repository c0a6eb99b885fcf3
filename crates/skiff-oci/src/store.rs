//! The image cache's OCI side: blobs stored once by digest (verified before
//! they count as stored), and images assembled from them as unpacked roots
//! beside the recipe images, so every VM path boots them alike.

use crate::manifest::{sniff, Compression, ImageConfig, Manifest};
use crate::unpack::apply_layer;
use crate::OciError;
use sha2::{Digest, Sha256};
use skiff_image::{human_size, ImageInfo, ImageSource, Progress};
use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

pub struct Store {
    cache: PathBuf,
}

/// An advisory lock (flock) on a file under `oci/locks`, released when
/// dropped, also when the process dies.
pub struct Lock {
    _file: fs::File,
}

/// The lock on one blob: only its holder writes the blob.
pub struct BlobLock {
    _lock: Lock,
    digest: String,
}

impl BlobLock {
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

impl Store {
    pub fn new(cache: &Path) -> Store {
        Store {
            cache: cache.to_owned(),
        }
    }

    fn blobs(&self) -> PathBuf {
        self.cache.join("oci/blobs/sha256")
    }

    /// Scratch space on the cache's filesystem (an archive's files can be
    /// larger than a RAM-backed /tmp).
    pub fn scratch(&self) -> Result<tempfile::TempDir, OciError> {
        let dir = self.cache.join("oci/tmp");
        fs::create_dir_all(&dir).map_err(|e| OciError::io("create", &dir, e))?;
        tempfile::tempdir_in(&dir).map_err(|e| OciError::io("create a directory in", &dir, e))
    }

    fn lock_file(&self, name: &str) -> Result<(fs::File, PathBuf), OciError> {
        let dir = self.cache.join("oci/locks");
        fs::create_dir_all(&dir).map_err(|e| OciError::io("create", &dir, e))?;
        let path = dir.join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| OciError::io("open", &path, e))?;
        Ok((file, path))
    }

    /// Lock `name`, waiting until it is free: shared (many holders) or
    /// exclusive.
    fn lock(&self, name: &str, shared: bool) -> Result<Lock, OciError> {
        let (file, path) = self.lock_file(name)?;
        if shared {
            file.lock_shared()
        } else {
            file.lock()
        }
        .map_err(|e| OciError::io("lock", &path, e))?;
        Ok(Lock { _file: file })
    }

    /// Lock `name` alone if nobody holds it (None if someone does).
    fn try_lock(&self, name: &str) -> Result<Option<Lock>, OciError> {
        let (file, path) = self.lock_file(name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(OciError::io("lock", &path, e)),
        }
    }

    /// Held (shared) by every pull and import while it adds to the store;
    /// prune takes it alone, so it never removes the blobs of an image
    /// still being made.
    pub fn adding(&self) -> Result<Lock, OciError> {
        self.lock("store", true)
    }

    /// Lock blob `digest` for writing. Another pull or import writing it
    /// is waited for (and said so): afterwards the blob is usually stored.
    pub fn lock_blob(&self, digest: &str, progress: &dyn Progress) -> Result<BlobLock, OciError> {
        // Checked first: only a well-formed digest names a lock file.
        let path = self.blob_path(digest)?;
        let hex = path.file_name().unwrap_or_default().to_string_lossy();
        let name = format!("blob-{hex}");
        let lock = match self.try_lock(&name)? {
            Some(l) => l,
            None => {
                progress.step(&format!("waiting for another pull of {}", short(digest)));
                self.lock(&name, false)?
            }
        };
        Ok(BlobLock {
            _lock: lock,
            digest: digest.to_owned(),
        })
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, OciError> {
        crate::reference::check_digest(digest).map_err(|why| OciError::BadDigest { why })?;
        Ok(self.blobs().join(&digest["sha256:".len()..]))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Forget what an interrupted download of `digest` left.
    pub fn discard_partial(&self, digest: &str) {
        if let Ok(p) = self.blob_path(digest) {
            let _ = fs::remove_file(partial(&p));
        }
    }

    /// How much of `digest` an interrupted download left (to resume from).
    pub fn partial_len(&self, digest: &str) -> u64 {
        self.blob_path(digest)
            .ok()
            .and_then(|p| fs::metadata(partial(&p)).ok())
            .map_or(0, |m| m.len())
    }

    /// Store the bytes of the locked blob read from `from`, which continues
    /// where [`Store::partial_len`] left off (`resume`: else from the
    /// start). The blob counts as stored only once its size and digest
    /// match; a mismatch removes what was written.
    pub fn put_blob(
        &self,
        lock: &BlobLock,
        image: &str,
        size: u64,
        resume: bool,
        mut from: impl Read,
        progress: &dyn Progress,
    ) -> Result<PathBuf, OciError> {
        let digest = lock.digest.as_str();
        let path = self.blob_path(digest)?;
        let dir = self.blobs();
        fs::create_dir_all(&dir).map_err(|e| OciError::io("create", &dir, e))?;
        let part = partial(&path);
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        if resume {
            if let Ok(mut f) = fs::File::open(&part) {
                written = std::io::copy(&mut f, &mut hasher)
                    .map_err(|e| OciError::io("read", &part, e))?;
            }
        }
        let mut out = fs::OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .open(&part)
            .map_err(|e| OciError::io("create", &part, e))?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // What arrived stays, for the next pull to resume from.
                Err(e) => {
                    return Err(OciError::Transfer {
                        image: image.to_owned(),
                        blob: digest.to_owned(),
                        why: e.to_string(),
                    })
                }
            };
            written += n as u64;
            if written > size {
                let _ = fs::remove_file(&part);
                return Err(OciError::BlobMismatch {
                    image: image.to_owned(),
                    blob: digest.to_owned(),
                    why: format!("more than the {size} bytes its descriptor says"),
                });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| OciError::io("write", &part, e))?;
            if written % (1 << 20) < n as u64 || written == size {
                progress.bytes(written, size);
            }
        }
        if written < size {
            return Err(OciError::Transfer {
                image: image.to_owned(),
                blob: digest.to_owned(),
                why: format!("the stream ended after {written} of {size} bytes"),
            });
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            let _ = fs::remove_file(&part);
            return Err(OciError::BlobMismatch {
                image: image.to_owned(),
                blob: digest.to_owned(),
                why: format!("its bytes hash to {got}"),
            });
        }
        out.sync_all()
            .map_err(|e| OciError::io("write", &part, e))?;
        fs::rename(&part, &path).map_err(|e| OciError::io("store", &path, e))?;
        Ok(path)
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, OciError> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(|e| OciError::io("read", &p, e))
    }

    /// The stored config of `manifest`, refused unless it is for this
    /// host's platform.
    pub fn image_config(&self, name: &str, manifest: &Manifest) -> Result<ImageConfig, OciError> {
        let config: ImageConfig = serde_json::from_slice(&self.read_blob(&manifest.config.digest)?)
            .map_err(|e| OciError::BadManifest {
                image: name.to_owned(),
                why: format!("its config {}: {e}", manifest.config.digest),
            })?;
        let want = crate::manifest::host_architecture();
        let (os, arch) = (
            config.os.as_deref().unwrap_or("linux"),
            config.architecture.as_deref().unwrap_or(want),
        );
        if os != "linux" || arch != want {
            return Err(OciError::Unsupported {
                image: name.to_owned(),
                what: format!("platform {os}/{arch} (this host runs linux/{want})"),
            });
        }
        Ok(config)
    }

    /// The image `name` from `manifest`, whose blobs are all stored: its
    /// layers applied in order to a fresh root, its config kept. Found, not
    /// rebuilt, when the same manifest was assembled under that name.
    pub fn assemble(
        &self,
        name: &str,
        source: ImageSource,
        manifest_digest: &str,
        manifest: &Manifest,
        progress: &dyn Progress,
    ) -> Result<ImageInfo, OciError> {
        let config = self.image_config(name, manifest)?;
        let hash = manifest_digest
            .strip_prefix("sha256:")
            .map_or("unknown", |h| &h[..h.len().min(24)])
            .to_owned();
        let group = skiff_image::images_dir(&self.cache).join(group_dir(name));
        let dir = group.join(&hash);
        // One assembly of an image at a time: a second waits, then finds it.
        let _assembling = self.lock(&format!("{}-{hash}", group_dir(name)), false)?;
        if let Ok(text) = fs::read_to_string(dir.join("image.json")) {
            if let Ok(info) = serde_json::from_str::<ImageInfo>(&text) {
                if info.name == name {
                    return Ok(info);
                }
            }
        }
        fs::create_dir_all(&group).map_err(|e| OciError::io("create", &group, e))?;
        // Image roots hold set-id files of their own users: only the
        // cache's owner may reach them.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&group, fs::Permissions::from_mode(0o700))
            .map_err(|e| OciError::io("chmod", &group, e))?;
        let staging = tempfile::tempdir_in(&group)
            .map_err(|e| OciError::io("create a directory in", &group, e))?;
        let root = staging.path().join("root");
        fs::create_dir(&root).map_err(|e| OciError::io("create", &root, e))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .map_err(|e| OciError::io("chmod", &root, e))?;
        let n = manifest.layers.len();
        for (i, layer) in manifest.layers.iter().enumerate() {
            progress.step(&format!(
                "unpacking layer {}/{n} {} ({})",
                i + 1,
                short(&layer.digest),
                human_size(layer.size)
            ));
            let path = self.blob_path(&layer.digest)?;
            let file = fs::File::open(&path).map_err(|e| OciError::io("open", &path, e))?;
            let mut reader = BufReader::new(file);
            let head = {
                use std::io::BufRead;
                reader
                    .fill_buf()
                    .map_err(|e| OciError::io("read", &path, e))?
                    .to_vec()
            };
            let stream: Box<dyn Read> = match sniff(&head) {
                Compression::None => Box::new(reader),
                // Every member: eStargz and other seekable layers are many gzip
                // streams in a row.
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::with_buffer(reader)
                        .map_err(|e| OciError::io("read", &path, e))?,
                ),
            };
            apply_layer(&root, &layer.digest, stream)?;
        }
        let built_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let info = ImageInfo {
            name: name.to_owned(),
            hash,
            root: dir.join("root"),
            built_at,
            recipe: None,
            source,
            config: Some(config.container_config()),
            size: Some(skiff_image::tree_size(&root)),
            blobs: std::iter::once(&manifest.config)
                .chain(&manifest.layers)
                .map(|d| d.digest.clone())
                .collect(),
        };
        let json = serde_json::to_string_pretty(&info)
            .map_err(|e| OciError::io("encode", &dir, e.into()))?;
        let meta = staging.path().join("image.json");
        fs::write(&meta, json).map_err(|e| OciError::io("write", &meta, e))?;
        let _ = fs::remove_dir_all(&dir); // a half-written earlier attempt
        let staged = staging.keep();
        fs::rename(&staged, &dir).map_err(|e| OciError::io("store", &dir, e))?;
        Ok(info)
    }
}

impl Store {
    /// Delete the blobs no image in the cache was made from, and what
    /// interrupted downloads left; (files, bytes) freed.
    pub fn prune(&self) -> Result<(u64, u64), OciError> {
        let Some(_alone) = self.try_lock("store")? else {
            return Err(OciError::Busy);
        };
        let keep: std::collections::HashSet<String> = skiff_image::list_images(&self.cache)
            .into_iter()
            .flat_map(|i| i.blobs)
            .filter_map(|d| d.strip_prefix("sha256:").map(str::to_owned))
            .collect();
        let dir = self.blobs();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok((0, 0));
        };
        let (mut files, mut bytes) = (0, 0);
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            let size = e.metadata().map_or(0, |m| m.len());
            fs::remove_file(e.path()).map_err(|err| OciError::io("remove", &e.path(), err))?;
            files += 1;
            bytes += size;
        }
        // Nobody else holds a lock now (pulls take `adding` first): the
        // files of the per-blob and per-image locks can go.
        let locks = self.cache.join("oci/locks");
        for e in fs::read_dir(&locks)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            if e.file_name() != "store.lock" {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok((files, bytes))
    }
}

fn partial(blob: &Path) -> PathBuf {
    blob.with_extension("partial")
}

/// The directory an image's builds live in: its name has `/` and `:`.
fn group_dir(name: &str) -> String {
    let h = hex::encode(Sha256::digest(name.as_bytes()));
    format!("oci-{}", &h[..16])
}

pub fn short(digest: &str) -> &str {
    let end = digest.len().min("sha256:".len() + 12);
    digest.get(..end).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn a_second_writer_of_a_blob_waits_for_the_first() {
        let cache = tempfile::tempdir().expect("tempdir");
        let first = Store::new(cache.path())
            .lock_blob(DIGEST, &skiff_image::NoProgress)
            .expect("first");
        let (tx, rx) = mpsc::channel();
        let dir = cache.path().to_owned();
        std::thread::spawn(move || {
            let lock = Store::new(&dir).lock_blob(DIGEST, &skiff_image::NoProgress);
            let _ = tx.send(lock.is_ok());
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the second lock was granted while the first was held"
        );
        drop(first);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
        assert!(Store::new(cache.path())
            .lock_blob("sha256:short", &skiff_image::NoProgress)
            .is_err());
    }

    #[test]
    fn prune_refuses_while_a_pull_adds_and_runs_after() {
        let cache = tempfile::tempdir().expect("tempdir");
        let store = Store::new(cache.path());
        let blobs = store.blobs();
        fs::create_dir_all(&blobs).expect("mkdir");
        fs::write(blobs.join(&DIGEST[7..]), b"unused").expect("blob");
        let adding = store.adding().expect("adding");
        let e = store.prune().expect_err("busy").to_string();
        assert!(e.contains("prune when it is done"), "{e}");
        assert!(blobs.join(&DIGEST[7..]).exists());
        drop(adding);
        assert_eq!(store.prune().expect("prune"), (1, 6));
        assert!(!blobs.join(&DIGEST[7..]).exists());
    }
}
