//! The image cache's OCI side: blobs stored once by digest (verified before
//! they count as stored), and images assembled from them as unpacked roots
//! beside the recipe images, so every VM path boots them alike.

use crate::manifest::{sniff, Compression, ImageConfig, Manifest};
use crate::unpack::apply_layer;
use crate::OciError;
use sha2::{Digest, Sha256};
use skiff_image::{ImageInfo, ImageSource, Progress};
use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

pub struct Store {
    cache: PathBuf,
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

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, OciError> {
        crate::reference::check_digest(digest).map_err(|why| OciError::BadDigest { why })?;
        Ok(self.blobs().join(&digest["sha256:".len()..]))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// How much of `digest` an interrupted download left (to resume from).
    pub fn partial_len(&self, digest: &str) -> u64 {
        self.blob_path(digest)
            .ok()
            .and_then(|p| fs::metadata(partial(&p)).ok())
            .map_or(0, |m| m.len())
    }

    /// Store the bytes of blob `digest` read from `from`, which continues
    /// where [`Store::partial_len`] left off (`resume`: else from the
    /// start). The blob counts as stored only once its size and digest
    /// match; a mismatch removes what was written.
    pub fn put_blob(
        &self,
        image: &str,
        digest: &str,
        size: u64,
        resume: bool,
        mut from: impl Read,
    ) -> Result<PathBuf, OciError> {
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
        let hash = manifest_digest
            .strip_prefix("sha256:")
            .map_or("unknown", |h| &h[..h.len().min(24)])
            .to_owned();
        let group = skiff_image::images_dir(&self.cache).join(group_dir(name));
        let dir = group.join(&hash);
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

pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
