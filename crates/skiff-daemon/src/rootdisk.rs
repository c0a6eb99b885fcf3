//! A VM's root disk: the shared read-only base (a user's raw/qcow2 file, or
//! an image's root directory as ext4) and the VM's own copy-on-write layer
//! over it, `root.qcow2` in the VM's directory. A persistent root keeps its
//! layer across stop/start and daemon restarts (a dev box); otherwise each
//! boot starts from a fresh layer (a sandbox). `rm` removes the layer with
//! the VM's directory; the base is never written.

use crate::hostops::{HostError, HostOps};
use skiff_image::DiskKind;
use skiff_spec::{DiskSource, DiskSpec};
use skiff_vmm::{DiskFormat, RootDisk};
use std::path::{Path, PathBuf};

/// The VM's writable layer.
pub fn layer_path(vm_dir: &Path) -> PathBuf {
    vm_dir.join("root.qcow2")
}

/// Why a root disk could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RootDiskError {
    #[error("the root disk's base {} is not usable", path.display())]
    Base {
        path: PathBuf,
        #[source]
        source: skiff_image::Error,
    },
    #[error("no image named {0:?}; build one with `skiff image build -f images/{0}.toml`")]
    NoImage(String),
    #[error("cannot build the root disk of image {name:?}")]
    ImageDisk {
        name: String,
        #[source]
        source: skiff_image::Error,
    },
    #[error("cannot make the VM's root disk layer")]
    Layer(#[source] HostError),
    #[error("cannot replace the VM's root disk layer {}", path.display())]
    RemoveLayer {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The base a disk spec names, and its format.
pub fn base(disk: &DiskSpec, cache: &Path) -> Result<(PathBuf, DiskKind), RootDiskError> {
    match &disk.source {
        DiskSource::File(path) => {
            let kind = skiff_image::disk_kind(path).map_err(|source| RootDiskError::Base {
                path: path.clone(),
                source,
            })?;
            Ok((path.clone(), kind))
        }
        DiskSource::Image(name) => {
            let info = skiff_oci::find_image(cache, name)
                .ok_or_else(|| RootDiskError::NoImage(name.clone()))?;
            let disk = skiff_image::ensure_image_disk(&info, &skiff_image::NoProgress).map_err(
                |source| RootDiskError::ImageDisk {
                    name: name.clone(),
                    source,
                },
            )?;
            Ok((disk, DiskKind::Raw))
        }
    }
}

/// The VM's layer over `base`: kept if the root is persistent and the layer
/// exists, made fresh otherwise.
pub fn prepare(
    host: &dyn HostOps,
    disk: &DiskSpec,
    base: &Path,
    kind: DiskKind,
    vm_dir: &Path,
) -> Result<RootDisk, RootDiskError> {
    let layer = layer_path(vm_dir);
    let keep = disk.persistent && layer.is_file();
    if !keep {
        match std::fs::remove_file(&layer) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RootDiskError::RemoveLayer {
                    path: layer,
                    source,
                })
            }
        }
        host.make_overlay(base, kind, &layer)
            .map_err(RootDiskError::Layer)?;
    }
    Ok(RootDisk {
        path: layer,
        format: DiskFormat::Qcow2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostops::{Op, RecordingHost};

    fn spec(persistent: bool) -> DiskSpec {
        DiskSpec {
            source: DiskSource::File("/images/base.qcow2".into()),
            persistent,
        }
    }

    fn overlays(host: &RecordingHost) -> usize {
        host.ops()
            .iter()
            .filter(|o| matches!(o, Op::MakeOverlay { .. }))
            .count()
    }

    #[test]
    fn a_sandbox_root_is_fresh_at_every_boot_a_dev_box_root_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = RecordingHost::default();
        let base = Path::new("/images/base.qcow2");
        let root = prepare(&host, &spec(false), base, DiskKind::Qcow2, dir.path()).expect("root");
        assert_eq!(root.path, dir.path().join("root.qcow2"));
        assert_eq!(root.format, DiskFormat::Qcow2);
        std::fs::write(&root.path, b"the guest wrote this").expect("write");
        prepare(&host, &spec(false), base, DiskKind::Qcow2, dir.path()).expect("again");
        assert_eq!(overlays(&host), 2, "a new layer for each sandbox boot");
        assert_eq!(std::fs::read(&root.path).expect("read"), b"");

        std::fs::write(&root.path, b"the guest wrote this").expect("write");
        prepare(&host, &spec(true), base, DiskKind::Qcow2, dir.path()).expect("kept");
        assert_eq!(overlays(&host), 2, "a dev box keeps its layer");
        assert_eq!(
            std::fs::read(&root.path).expect("read"),
            b"the guest wrote this"
        );
        assert!(host.ops().contains(&Op::MakeOverlay {
            base: base.to_owned(),
            overlay: root.path.clone(),
        }));
    }

    #[test]
    fn a_failed_layer_is_reported_and_a_missing_base_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = RecordingHost::default();
        host.fail_on("MakeOverlay");
        let err = prepare(
            &host,
            &spec(false),
            Path::new("/b"),
            DiskKind::Raw,
            dir.path(),
        )
        .expect_err("injected");
        assert!(matches!(err, RootDiskError::Layer(_)), "{err}");
        assert!(!layer_path(dir.path()).exists());

        let missing = DiskSpec {
            source: DiskSource::File(dir.path().join("gone.qcow2")),
            persistent: false,
        };
        let err = base(&missing, dir.path()).expect_err("missing base");
        let text = crate::support::error_chain(&err);
        assert!(text.contains("gone.qcow2"), "{text}");
        let image = DiskSpec {
            source: DiskSource::Image("nope".into()),
            persistent: false,
        };
        let err = base(&image, dir.path()).expect_err("no image");
        assert!(err.to_string().contains("skiff image build"), "{err}");
    }
}
