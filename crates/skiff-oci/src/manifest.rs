//! The JSON documents of the OCI image spec (and Docker's v2 schema 2,
//! which registries still serve): indexes, manifests, image configs. Only
//! the fields skiff uses; unknown ones are ignored, as the spec asks.

use crate::OciError;
use serde::Deserialize;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Layer media types that are tar archives of a filesystem (plain, gzip or
/// zstd; Docker's "foreign" layers are gzip tars too).
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Config media types of container images (an artifact, a Helm chart say,
/// has its own).
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// What a registry is asked to answer with, best first.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

/// A manifest document: an index of per-platform manifests, or one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

/// The parts of an image config skiff applies.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

impl ImageConfig {
    pub fn container_config(&self) -> skiff_image::ContainerConfig {
        let c = self.config.clone().unwrap_or_default();
        skiff_image::ContainerConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
        }
    }
}

/// Parse a manifest document, deciding its kind by its media type (the
/// header's, else the document's own field, else its shape).
pub fn parse_document(
    image: &str,
    media_type: Option<&str>,
    body: &[u8],
) -> Result<Document, OciError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let bad = |why: String| OciError::BadManifest {
        image: image.to_owned(),
        why,
    };
    let probe: Probe = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    // Parameters (`; charset=…`) are not part of the type.
    let bare = |m: &str| m.split(';').next().unwrap_or("").trim().to_owned();
    let kind = media_type
        .map(bare)
        .filter(|m| !m.is_empty() && m != "application/json")
        .or(probe.media_type.as_deref().map(bare))
        .unwrap_or_else(|| {
            if probe.manifests.is_some() {
                OCI_INDEX
            } else {
                OCI_MANIFEST
            }
            .to_owned()
        });
    let doc = match kind.as_str() {
        OCI_INDEX | DOCKER_LIST => serde_json::from_slice(body)
            .map(Document::Index)
            .map_err(|e| bad(e.to_string()))?,
        OCI_MANIFEST | DOCKER_MANIFEST => serde_json::from_slice(body)
            .map(Document::Manifest)
            .map_err(|e| bad(e.to_string()))?,
        other => {
            return Err(OciError::Unsupported {
                image: image.to_owned(),
                what: format!("manifest media type {other}"),
            })
        }
    };
    // Every digest is checked before anything is fetched or sliced by it.
    let descriptors: Vec<&Descriptor> = match &doc {
        Document::Index(i) => i.manifests.iter().collect(),
        Document::Manifest(m) => std::iter::once(&m.config).chain(&m.layers).collect(),
    };
    for d in descriptors {
        crate::reference::check_digest(&d.digest).map_err(bad)?;
    }
    if let Document::Manifest(m) = &doc {
        check_media_types(image, m)?;
    }
    Ok(doc)
}

/// Refuse a manifest that is not a container image (its config says
/// otherwise) or has a layer that is not a filesystem tar (encrypted, an
/// artifact's blob), naming it. An empty media type is let through: the
/// bytes are sniffed when unpacked.
fn check_media_types(image: &str, m: &Manifest) -> Result<(), OciError> {
    let unsupported = |what: String| OciError::Unsupported {
        image: image.to_owned(),
        what,
    };
    let config = m.config.media_type.as_str();
    if !config.is_empty() && !CONFIG_TYPES.contains(&config) {
        return Err(unsupported(format!(
            "config media type {config}: this is not a container image (an artifact?)"
        )));
    }
    for (i, layer) in m.layers.iter().enumerate() {
        let t = layer.media_type.as_str();
        if !t.is_empty() && !LAYER_TYPES.contains(&t) {
            return Err(unsupported(format!(
                "media type {t} of layer {}/{} {} (skiff unpacks tar layers: plain, gzip or zstd)",
                i + 1,
                m.layers.len(),
                layer.digest
            )));
        }
    }
    Ok(())
}

/// The linux/amd64 entry of an index.
pub fn pick_platform<'a>(image: &str, index: &'a Index) -> Result<&'a Descriptor, OciError> {
    let want = host_architecture();
    index
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == want)
        })
        .ok_or_else(|| {
            let offered: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            OciError::Unsupported {
                image: image.to_owned(),
                what: format!(
                    "platforms: it has {} and this host runs linux/{want}",
                    if offered.is_empty() {
                        "none named".to_owned()
                    } else {
                        offered.join(", ")
                    }
                ),
            }
        })
}

/// The OCI name of this host's architecture.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Layer compression, from the first bytes (media types lie; `docker
/// save` archives hold plain tars).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn sniff(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_and_manifests_are_told_apart_and_amd64_is_picked() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1,"platform":{"architecture":"arm64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":2,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let Document::Index(i) = parse_document("x", None, index).expect("index") else {
            panic!("not an index")
        };
        if host_architecture() == "amd64" {
            assert_eq!(
                pick_platform("x", &i).expect("amd64").digest,
                "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
            );
        }
        let only_arm = Index {
            manifests: vec![i.manifests[0].clone()],
        };
        let e = pick_platform("app:1", &only_arm)
            .expect_err("none")
            .to_string();
        assert!(e.contains("app:1") && e.contains("linux/arm64"), "{e}");
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":3},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd","size":4}]}"#;
        let Document::Manifest(m) = parse_document("x", Some("application/json"), m).expect("m")
        else {
            panic!("not a manifest")
        };
        assert_eq!(
            m.layers[0].digest,
            "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
        );
        let e = parse_document(
            "x",
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            b"{}",
        )
        .expect_err("v1")
        .to_string();
        assert!(
            e.contains(
                "manifest media type application/vnd.docker.distribution.manifest.v1+prettyjws"
            ),
            "{e}"
        );
    }

    #[test]
    fn artifacts_and_unknown_layer_types_are_refused_by_name() {
        let doc = |config: &str, layer: &str| {
            format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"{config}","digest":"sha256:{c}","size":3}},
                "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{d}","size":4}},
                {{"mediaType":"{layer}","digest":"sha256:{e}","size":5}}]}}"#,
                c = "c".repeat(64),
                d = "d".repeat(64),
                e = "e".repeat(64)
            )
        };
        let oci_config = "application/vnd.oci.image.config.v1+json";
        let parse = |body: String| parse_document("app:1", Some(OCI_MANIFEST), body.as_bytes());
        parse(doc(
            oci_config,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ))
        .expect("zstd");
        parse(doc(oci_config, "")).expect("no media type");
        let e = parse(doc(
            oci_config,
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        ))
        .expect_err("encrypted")
        .to_string();
        assert!(
            e.contains("app:1")
                && e.contains("layer 2/2 sha256:eeee")
                && e.contains("tar+gzip+encrypted"),
            "{e}"
        );
        let e = parse(doc(
            "application/vnd.cncf.helm.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar",
        ))
        .expect_err("helm")
        .to_string();
        assert!(
            e.contains("helm.config") && e.contains("not a container image"),
            "{e}"
        );
    }

    #[test]
    fn compression_is_sniffed_from_the_bytes() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"./etc/"), Compression::None);
    }
}
