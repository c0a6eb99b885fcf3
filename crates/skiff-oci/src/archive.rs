//! Images without a registry: `docker save` archives (both the classic
//! layout with manifest.json and the OCI layout newer dockers write) and
//! OCI layout directories (`skopeo copy … oci:DIR:TAG`).

use crate::manifest::{parse_document, pick_platform, Descriptor, Document, Manifest};
use crate::store::Store;
use crate::OciError;
use serde::Deserialize;
use skiff_image::{ImageInfo, ImageSource, Progress};
use std::fs;
use std::path::{Path, PathBuf};

/// Import the image at `path` (an archive file or an OCI layout directory)
/// as `name`, or as the name the archive gives it.
pub fn import(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    progress: &dyn Progress,
) -> Result<ImageInfo, OciError> {
    let shown = path.display().to_string();
    let _adding = store.adding()?;
    let meta = fs::metadata(path).map_err(|e| OciError::io("read", path, e))?;
    let unpacked;
    let layout = if meta.is_dir() {
        path.to_owned()
    } else {
        progress.step(&format!("reading {shown}"));
        unpacked = unpack_archive(store, path)?;
        unpacked.path().to_owned()
    };
    let (name, manifest_digest, manifest) = if layout.join("index.json").is_file() {
        from_oci_layout(store, &layout, &shown, name)?
    } else if layout.join("manifest.json").is_file() {
        from_docker_save(store, &layout, &shown, name)?
    } else {
        return Err(OciError::BadArchive {
            path: shown,
            why: "it has neither index.json (an OCI layout) nor manifest.json (docker save)".into(),
        });
    };
    let source = ImageSource::Import {
        path: path.to_owned(),
        digest: manifest_digest.clone(),
    };
    store.assemble(&name, source, &manifest_digest, &manifest, progress)
}

/// The archive's files in a temporary directory. Only plain files and
/// directories with plain relative paths are taken: the archive's layout
/// is all skiff reads from it (its layers are applied later, with their own
/// checks).
fn unpack_archive(store: &Store, path: &Path) -> Result<tempfile::TempDir, OciError> {
    let shown = path.display().to_string();
    let bad = |why: String| OciError::BadArchive {
        path: shown.clone(),
        why,
    };
    let file = fs::File::open(path).map_err(|e| OciError::io("open", path, e))?;
    let dir = store.scratch()?;
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let p = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let plain = p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if !plain {
            return Err(bad(format!("its entry {} leaves the archive", p.display())));
        }
        let kind = entry.header().entry_type();
        let to = dir.path().join(&p);
        if kind.is_dir() {
            fs::create_dir_all(&to).map_err(|e| OciError::io("create", &to, e))?;
        } else if kind.is_file() {
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(|e| OciError::io("create", parent, e))?;
            }
            let mut out = fs::File::create(&to).map_err(|e| OciError::io("create", &to, e))?;
            std::io::copy(&mut entry, &mut out).map_err(|e| bad(e.to_string()))?;
        } else if kind.is_symlink() {
            // Old docker saves link a layer that two images share; the
            // link becomes a copy below, if it points at a file of the
            // archive.
            if let Ok(Some(target)) = entry.link_name() {
                links.push((p.clone(), target.into_owned()));
            }
        }
    }
    for (link, target) in links {
        let resolved = link.parent().unwrap_or(Path::new("")).join(&target);
        let mut plain = PathBuf::new();
        for c in resolved.components() {
            match c {
                std::path::Component::Normal(n) => plain.push(n),
                std::path::Component::ParentDir if plain.pop() => {}
                std::path::Component::CurDir => {}
                _ => {
                    return Err(bad(format!(
                        "its link {} leaves the archive",
                        link.display()
                    )))
                }
            }
        }
        let (from, to) = (dir.path().join(&plain), dir.path().join(&link));
        if from.is_file() {
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(|e| OciError::io("create", parent, e))?;
            }
            fs::copy(&from, &to).map_err(|e| OciError::io("copy", &from, e))?;
        }
    }
    Ok(dir)
}

fn blob_file(layout: &Path, digest: &str) -> Result<PathBuf, OciError> {
    crate::reference::check_digest(digest).map_err(|why| OciError::BadManifest {
        image: layout.display().to_string(),
        why,
    })?;
    Ok(layout.join("blobs/sha256").join(&digest["sha256:".len()..]))
}

/// Copy one blob of a layout into the store, verified.
fn take_blob(store: &Store, image: &str, layout: &Path, d: &Descriptor) -> Result<(), OciError> {
    let lock = store.lock_blob(&d.digest, &skiff_image::NoProgress)?;
    if store.has_blob(&d.digest) {
        return Ok(());
    }
    let p = blob_file(layout, &d.digest)?;
    let f = fs::File::open(&p).map_err(|e| OciError::io("open", &p, e))?;
    store.put_blob(&lock, image, d.size, false, f, &skiff_image::NoProgress)?;
    Ok(())
}

fn from_oci_layout(
    store: &Store,
    layout: &Path,
    shown: &str,
    name: Option<&str>,
) -> Result<(String, String, Manifest), OciError> {
    #[derive(Deserialize)]
    struct Top {
        manifests: Vec<TopEntry>,
    }
    #[derive(Deserialize)]
    struct TopEntry {
        #[serde(flatten)]
        descriptor: Descriptor,
        #[serde(default)]
        annotations: std::collections::HashMap<String, String>,
    }
    let index_path = layout.join("index.json");
    let text = fs::read(&index_path).map_err(|e| OciError::io("read", &index_path, e))?;
    let top: Top = serde_json::from_slice(&text).map_err(|e| OciError::BadArchive {
        path: shown.to_owned(),
        why: format!("index.json: {e}"),
    })?;
    let entry = match top.manifests.as_slice() {
        [one] => one,
        [] => {
            return Err(OciError::BadArchive {
                path: shown.to_owned(),
                why: "index.json lists no image".into(),
            })
        }
        many => {
            // Several images: the one whose ref name the caller gave.
            let wanted = name.and_then(|n| n.rsplit(':').next());
            let found = many.iter().find(|m| {
                m.annotations
                    .get("org.opencontainers.image.ref.name")
                    .map(String::as_str)
                    == wanted
            });
            found.ok_or_else(|| OciError::BadArchive {
                path: shown.to_owned(),
                why: format!(
                    "it holds {} images; name one with --name NAME:TAG",
                    many.len()
                ),
            })?
        }
    };
    let ref_name = entry
        .annotations
        .get("io.containerd.image.name")
        .or_else(|| entry.annotations.get("org.opencontainers.image.ref.name"))
        .cloned();
    // A ref name that is only a tag ("only") does not name an image.
    let ref_name = ref_name.filter(|r| r.contains(':') || r.contains('/'));
    let name = image_name(name, ref_name.as_deref(), shown)?;
    let mut digest = entry.descriptor.digest.clone();
    let mut doc = read_document(layout, &name, &entry.descriptor)?;
    if let Document::Index(i) = &doc {
        let d = pick_platform(&name, i)?.clone();
        digest = d.digest.clone();
        doc = read_document(layout, &name, &d)?;
    }
    let Document::Manifest(m) = doc else {
        return Err(OciError::BadManifest {
            image: name,
            why: "an index inside an index".into(),
        });
    };
    take_blob(store, &name, layout, &m.config)?;
    for l in &m.layers {
        take_blob(store, &name, layout, l)?;
    }
    Ok((name, digest, m))
}

fn read_document(layout: &Path, image: &str, d: &Descriptor) -> Result<Document, OciError> {
    let p = blob_file(layout, &d.digest)?;
    let body = fs::read(&p).map_err(|e| OciError::io("read", &p, e))?;
    let got = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body))
    );
    if got != d.digest {
        return Err(OciError::BlobMismatch {
            image: image.to_owned(),
            blob: d.digest.clone(),
            why: format!("its bytes hash to {got}"),
        });
    }
    let media = (!d.media_type.is_empty()).then_some(d.media_type.as_str());
    parse_document(image, media, &body)
}

fn from_docker_save(
    store: &Store,
    layout: &Path,
    shown: &str,
    name: Option<&str>,
) -> Result<(String, String, Manifest), OciError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Saved {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let bad = |why: String| OciError::BadArchive {
        path: shown.to_owned(),
        why,
    };
    let mpath = layout.join("manifest.json");
    let text = fs::read(&mpath).map_err(|e| OciError::io("read", &mpath, e))?;
    let saved: Vec<Saved> =
        serde_json::from_slice(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let one = match saved.as_slice() {
        [one] => one,
        [] => return Err(bad("manifest.json lists no image".into())),
        _ => return Err(bad("it holds several images; save one per archive".into())),
    };
    let tag = one.repo_tags.as_ref().and_then(|t| t.first());
    let name = image_name(name, tag.map(String::as_str), shown)?;
    // Files are stored by the digest of their bytes: a classic archive
    // names layers by directory, not by content.
    let put = |rel: &str| -> Result<Descriptor, OciError> {
        let p = layout.join(rel);
        let plain = Path::new(rel)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || !p.is_file() {
            return Err(bad(format!(
                "manifest.json names {rel}, which is not a file in the archive"
            )));
        }
        let (digest, size) = hash_file(&p)?;
        let lock = store.lock_blob(&digest, &skiff_image::NoProgress)?;
        if !store.has_blob(&digest) {
            let f = fs::File::open(&p).map_err(|e| OciError::io("open", &p, e))?;
            store.put_blob(&lock, &name, size, false, f, &skiff_image::NoProgress)?;
        }
        Ok(Descriptor {
            media_type: String::new(),
            digest,
            size,
            platform: None,
        })
    };
    let config = put(&one.config)?;
    let layers = one
        .layers
        .iter()
        .map(|l| put(l))
        .collect::<Result<Vec<_>, _>>()?;
    // No manifest digest exists for a classic archive: the config's stands
    // for the image (it names the layers' contents by their diff ids).
    let digest = config.digest.clone();
    Ok((
        name,
        digest,
        Manifest {
            media_type: None,
            config,
            layers,
        },
    ))
}

/// The imported image's name: `--name`, else the archive's own, as a
/// reference in its short form.
fn image_name(
    given: Option<&str>,
    in_archive: Option<&str>,
    shown: &str,
) -> Result<String, OciError> {
    let name = given.or(in_archive).ok_or_else(|| OciError::BadArchive {
        path: shown.to_owned(),
        why: "it does not name its image; give one with --name NAME:TAG".into(),
    })?;
    Ok(crate::Reference::parse(name)?.familiar())
}

fn hash_file(p: &Path) -> Result<(String, u64), OciError> {
    use sha2::Digest;
    let mut f = fs::File::open(p).map_err(|e| OciError::io("open", p, e))?;
    let mut h = sha2::Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(|e| OciError::io("read", p, e))?;
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}
