//! OCI images for skiff: pulled from a registry or imported from an
//! archive, stored once by digest, unpacked (whiteouts applied, hostile
//! paths refused) into roots in the image cache, where every VM path finds
//! them as it finds recipe images. Nothing here launches a VM.

mod archive;
mod auth;
pub mod manifest;
mod reference;
mod registry;
mod store;
mod unpack;

pub use archive::import;
pub use reference::{check_digest, Reference};
pub use registry::pull;
pub use store::{BlobLock, Lock, Store};
pub use unpack::{apply_layer, Applied};

use std::path::{Path, PathBuf};

/// The cached image `name` names: by its exact name (a recipe image, or an
/// OCI image by its short form), else as an image reference written
/// another way (`alpine` for `alpine:latest`, `docker.io/library/alpine`).
pub fn find_image(cache: &Path, name: &str) -> Option<skiff_image::ImageInfo> {
    skiff_image::find_image(cache, name).or_else(|| {
        let r = Reference::parse(name).ok()?;
        skiff_image::find_image(cache, &r.familiar())
    })
}

/// The reference `name` is, when it is plainly one: it has a tag, a
/// digest, a registry or a path. A bare word (`python`) may be a recipe
/// image not built yet, and pulling `docker.io/library/python` in its place
/// would run someone else's image; such a name is never pulled.
pub fn pullable(name: &str) -> Option<Reference> {
    if !name.contains([':', '/', '@']) {
        return None;
    }
    Reference::parse(name).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid image reference {reference:?}: {why}")]
    BadReference { reference: String, why: String },
    #[error("image {image}: the registry failed: {why}")]
    Registry { image: String, why: String },
    #[error(
        "image {image}: blob {blob} did not arrive whole ({why}); run the pull again to resume"
    )]
    Transfer {
        image: String,
        blob: String,
        why: String,
    },
    #[error(
        "image {image}: blob {blob} is not what its digest says ({why}); nothing of it was kept"
    )]
    BlobMismatch {
        image: String,
        blob: String,
        why: String,
    },
    #[error("{why}")]
    BadDigest { why: String },
    #[error("a pull or import is adding to the image cache; prune when it is done")]
    Busy,
    #[error("image {image}: bad manifest: {why}")]
    BadManifest { image: String, why: String },
    #[error("image {image}: unsupported {what}")]
    Unsupported { image: String, what: String },
    #[error("layer {layer} is corrupt: {why}")]
    CorruptLayer { layer: String, why: String },
    #[error("layer {layer} is refused: {path}: {why}")]
    HostileLayer {
        layer: String,
        path: String,
        why: String,
    },
    #[error("{path} is not an image archive: {why}")]
    BadArchive { path: String, why: String },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl OciError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> OciError {
        OciError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}
