//! The drives a daemon VM boots with: its config drive (instance metadata,
//! rebuilt at every boot) and its named volumes (persistent, created on
//! first use, kept across `rm` unless `rm --volumes`).

use super::manager::DaemonPaths;
use super::store::VmRecord;
use anyhow::{Context, Result};
use skiff_proto::guest::{MountArg, CONFIG_LABEL, CONFIG_MOUNT};
use skiff_vmm::Drive;
use std::path::{Path, PathBuf};

/// Size of a volume created without a size in the spec.
const DEFAULT_VOLUME_MIB: u32 = 1024;

pub fn volume_path(paths: &DaemonPaths, name: &str) -> PathBuf {
    paths.state_dir.join("volumes").join(format!("{name}.ext4"))
}

/// A volume's ext4 label: short (ext4 allows 16 bytes) and derived from
/// the name, so the agent can tell volumes apart without device order.
pub fn volume_label(name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("skv-{h:08x}")
}

pub fn prepare(paths: &DaemonPaths, rec: &VmRecord, vm_dir: &Path) -> Result<Vec<Drive>> {
    let mut drives = vec![config_drive(rec, vm_dir)?];
    for v in &rec.spec.volumes {
        let path = volume_path(paths, &v.name);
        if !path.exists() {
            let dir = path.parent().context("volume path has no parent")?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let size = v.size_mib.unwrap_or(DEFAULT_VOLUME_MIB);
            skiff_image::make_ext4(&volume_label(&v.name), None, &path, size, true)
                .with_context(|| format!("cannot create volume {:?}", v.name))?;
        }
        drives.push(Drive {
            path,
            mount: MountArg {
                label: volume_label(&v.name),
                target: v.target.clone(),
                readonly: v.readonly,
                noexec: false,
                nosuid: false,
                nodev: true,
            },
        });
    }
    Ok(drives)
}

/// The read-only config drive: `instance.json` with what the guest may want
/// to know about itself.
fn config_drive(rec: &VmRecord, vm_dir: &Path) -> Result<Drive> {
    let staging = vm_dir.join("config");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let addresses: Vec<&str> = if rec
        .spec
        .network
        .iter()
        .any(|n| n.mode == skiff_spec::NetMode::User)
    {
        vec!["10.0.2.15"]
    } else {
        Vec::new()
    };
    let instance = serde_json::json!({
        "name": rec.name,
        "id": rec.id,
        "spec_hash": rec.spec_hash,
        "addresses": addresses,
    });
    std::fs::write(
        staging.join("instance.json"),
        serde_json::to_vec_pretty(&instance)?,
    )
    .context("cannot write instance.json")?;
    let image = vm_dir.join("config.ext4");
    skiff_image::make_ext4(CONFIG_LABEL, Some(&staging), &image, 4, false)
        .context("cannot build the config drive")?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(Drive {
        path: image,
        mount: MountArg {
            label: CONFIG_LABEL.into(),
            target: CONFIG_MOUNT.into(),
            readonly: true,
            noexec: true,
            nosuid: true,
            nodev: true,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::volume_label;

    #[test]
    fn volume_labels_fit_ext4_and_differ_by_name() {
        assert_eq!(volume_label("data").len(), 12);
        assert_ne!(volume_label("data"), volume_label("data2"));
        assert_eq!(volume_label("data"), volume_label("data"));
    }
}
