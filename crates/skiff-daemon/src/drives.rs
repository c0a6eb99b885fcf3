//! The drives a daemon VM boots with: its config drive (instance metadata,
//! rebuilt at every boot) and its named volumes (persistent, created on
//! first use, kept across `rm` unless `rm --volumes`).

use crate::hostops::HostOps;
use crate::paths::DaemonPaths;
use crate::store::VmRecord;
use skiff_proto::guest::{
    MountArg, CONFIG_LABEL, CONFIG_MOUNT, DATA_LABEL, SECRETS_LABEL, SECRETS_MOUNT,
};
use skiff_spec::SecretSource;
use skiff_vmm::Drive;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Size of a volume created without a size in the spec.
const DEFAULT_VOLUME_MIB: u32 = 1024;

/// Why a drive could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: crate::hostops::HostError,
    },
    #[error("cannot create volume {name:?}")]
    Volume {
        name: String,
        #[source]
        source: Box<DriveError>,
    },
    #[error("cannot create the data drive")]
    Data(#[source] Box<DriveError>),
    #[error("secret {name:?}: cannot read {}", path.display())]
    SecretFile {
        name: String,
        path: PathBuf,
        #[source]
        source: SecretFileError,
    },
    #[error("secret {name:?}: the daemon's environment has no {var}")]
    SecretEnv { name: String, var: String },
    #[error("cannot build the {what} drive")]
    Build {
        what: &'static str,
        #[source]
        source: crate::hostops::HostError,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DriveError {
    let path = path.to_owned();
    move |source| DriveError::Io {
        action,
        path,
        source,
    }
}

pub fn volume_path(paths: &DaemonPaths, name: &str) -> PathBuf {
    paths.state_dir.join("volumes").join(format!("{name}.ext4"))
}

/// A VM's own data drive, named after the VM.
pub fn data_path(paths: &DaemonPaths, vm: &str) -> PathBuf {
    paths.state_dir.join("data").join(format!("{vm}.ext4"))
}

/// Create an empty ext4 image at `path` unless it exists.
pub fn ensure_image(
    host: &dyn HostOps,
    path: &Path,
    label: &str,
    size_mib: u32,
) -> Result<(), DriveError> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    host.make_ext4(label, None, path, size_mib, true)
        .map_err(|source| DriveError::Image {
            path: path.to_owned(),
            source,
        })
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

/// Largest secret file read, in bytes: secrets are keys and tokens, and a
/// spec naming a huge file must not fill the daemon's memory.
pub const MAX_SECRET_BYTES: u64 = 1024 * 1024;

/// Why a secret's file was not read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("it is not a regular file (a device, a FIFO or a directory); name a file")]
    NotRegular,
    #[error("it is larger than {MAX_SECRET_BYTES} bytes; a secret is a key or a token")]
    TooLarge,
}

/// Read a secret's file: a regular file of at most [`MAX_SECRET_BYTES`].
/// Opened non-blocking so that a FIFO cannot hang the daemon, checked on
/// the open descriptor, and read with a bound in case it grows meanwhile.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    // Checked before opening: opening some devices does something (a
    // watchdog arms, a tape rewinds). Checked again on the descriptor, in
    // case the path was swapped in between.
    let named = std::fs::metadata(path)?;
    if !named.file_type().is_file() {
        return Err(SecretFileError::NotRegular);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || (meta.dev(), meta.ino()) != (named.dev(), named.ino()) {
        return Err(SecretFileError::NotRegular);
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(SecretFileError::TooLarge);
    }
    let mut value = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_SECRET_BYTES + 1).read_to_end(&mut value)?;
    if value.len() as u64 > MAX_SECRET_BYTES {
        return Err(SecretFileError::TooLarge);
    }
    Ok(value)
}

/// The drives of one boot. `secrets_image` is the in-memory secrets image,
/// which the caller deletes as soon as the guest has it open.
#[derive(Debug)]
pub struct BootDrives {
    pub drives: Vec<Drive>,
    pub secrets_image: Option<PathBuf>,
}

/// Where secrets images are built: memory only (tmpfs), never the disk.
fn secrets_dir(paths: &DaemonPaths) -> PathBuf {
    if let Some(d) = std::env::var_os("SKIFF_SECRETS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        return shm;
    }
    // The runtime directory is /run or $XDG_RUNTIME_DIR: tmpfs as well.
    paths.runtime_dir.clone()
}

/// The labels of a VM's config, secrets and data drives, by the guest
/// contract its spec names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriveLabels {
    pub config: &'static str,
    pub secrets: &'static str,
    pub data: &'static str,
    /// Attach a secrets drive even with no secrets: an mvm guest finds its
    /// drives in order (config vdb, secrets vdc, data vdd).
    pub secrets_always: bool,
}

impl DriveLabels {
    pub fn for_spec(spec: &skiff_spec::VmSpec) -> DriveLabels {
        match spec.guest {
            skiff_spec::GuestProfile::Skiff => DriveLabels {
                config: CONFIG_LABEL,
                secrets: SECRETS_LABEL,
                data: DATA_LABEL,
                secrets_always: false,
            },
            skiff_spec::GuestProfile::Mvm => DriveLabels {
                config: "mvm-config",
                secrets: "mvm-secrets",
                data: "mvm-data",
                secrets_always: true,
            },
        }
    }
}

pub fn prepare(
    host: &dyn HostOps,
    paths: &DaemonPaths,
    rec: &VmRecord,
    vm_dir: &Path,
) -> Result<BootDrives, DriveError> {
    let labels = DriveLabels::for_spec(&rec.spec);
    // A `skiff run` VM lives for one command and has no metadata worth a
    // drive: skipping it keeps mkfs off the run's boot path. A guest with
    // its own initrd has no agent to read it, unless its contract (mvm's)
    // has a config drive.
    let wants_config = rec.spec.has_agent() || rec.spec.guest == skiff_spec::GuestProfile::Mvm;
    let mut drives = Vec::new();
    if !rec.ephemeral && wants_config {
        drives.push(config_drive(host, rec, vm_dir, labels.config)?);
    }
    let secrets_image = match secrets_drive(host, rec, &secrets_dir(paths), &labels)? {
        Some((drive, image)) => {
            drives.push(drive);
            Some(image)
        }
        None => None,
    };
    if let Some(data) = &rec.spec.data {
        let path = data_path(paths, &rec.name);
        ensure_image(host, &path, labels.data, data.size_mib)
            .map_err(|e| DriveError::Data(Box::new(e)))?;
        drives.push(Drive {
            path,
            mount: MountArg {
                label: labels.data.into(),
                target: data.target.clone(),
                readonly: false,
                noexec: false,
                nosuid: false,
                nodev: true,
            },
        });
    }
    for v in &rec.spec.volumes {
        let path = volume_path(paths, &v.name);
        ensure_image(
            host,
            &path,
            &volume_label(&v.name),
            v.size_mib.unwrap_or(DEFAULT_VOLUME_MIB),
        )
        .map_err(|e| DriveError::Volume {
            name: v.name.clone(),
            source: Box::new(e),
        })?;
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
    Ok(BootDrives {
        drives,
        secrets_image,
    })
}

/// Build the secrets drive in memory: files 0400 in an image 0600, read
/// from their sources now. Only the image's path is returned; nothing of it
/// touches the state directory.
fn secrets_drive(
    host: &dyn HostOps,
    rec: &VmRecord,
    base: &Path,
    labels: &DriveLabels,
) -> Result<Option<(Drive, PathBuf)>, DriveError> {
    if rec.spec.secrets.is_empty() && !labels.secrets_always {
        return Ok(None);
    }
    let tag = format!(
        "skiff-secrets-{}-{}",
        rec.id,
        &crate::paths::new_vm_id()[..6]
    );
    let staging = base.join(&tag);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io("create", &staging))?;
    let result = (|| -> Result<(Drive, PathBuf), DriveError> {
        let mut total = 0u64;
        for (name, source) in &rec.spec.secrets {
            let value = match source {
                SecretSource::File(p) => {
                    read_secret_file(p).map_err(|source| DriveError::SecretFile {
                        name: name.clone(),
                        path: p.clone(),
                        source,
                    })?
                }
                SecretSource::Env(var) => std::env::var(var)
                    .map_err(|_| DriveError::SecretEnv {
                        name: name.clone(),
                        var: var.clone(),
                    })?
                    .into_bytes(),
            };
            total += value.len() as u64;
            let file = staging.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&file)
                .map_err(io("create", &file))?;
            f.write_all(&value).map_err(io("write", &file))?;
        }
        let image = base.join(format!("{tag}.ext4"));
        // Create the file private first: mkfs.ext4 keeps the mode of an
        // existing file, so the image is never readable by others.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&image)
            .map_err(io("create", &image))?;
        let size_mib = (total / (1024 * 1024) * 2 + 4).min(u64::from(u32::MAX)) as u32;
        host.make_ext4(labels.secrets, Some(&staging), &image, size_mib, false)
            .map_err(|source| DriveError::Build {
                what: "secrets",
                source,
            })?;
        let mount = MountArg {
            label: labels.secrets.into(),
            target: SECRETS_MOUNT.into(),
            readonly: true,
            noexec: true,
            nosuid: true,
            nodev: true,
        };
        Ok((
            Drive {
                path: image.clone(),
                mount,
            },
            image,
        ))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result.map(Some)
}

/// A host directory a spec names that is not there.
#[derive(Debug, thiserror::Error)]
#[error("{what} {} is not an existing {kind}", path.display())]
pub struct MissingSource {
    pub what: &'static str,
    pub path: PathBuf,
    /// "directory" or "file".
    pub kind: &'static str,
}

/// Check that the host directories a spec names exist (its shares and its
/// root), so that a missing one is reported by name before anything starts.
pub fn check_sources(spec: &skiff_spec::VmSpec) -> Result<(), MissingSource> {
    let missing = |what, path: &Path| MissingSource {
        what,
        path: path.to_owned(),
        kind: "directory",
    };
    // A guest's own kernel and initrd are used as they are: say which one
    // is missing before QEMU starts.
    if let (Some(initrd), Some(kernel)) = (
        spec.own_initrd(),
        spec.kernel.as_ref().and_then(|k| k.path.as_deref()),
    ) {
        for (what, path) in [("kernel.path", kernel), ("kernel.initrd", initrd)] {
            if !path.is_file() {
                return Err(MissingSource {
                    what,
                    path: path.to_owned(),
                    kind: "file",
                });
            }
        }
    }
    for s in &spec.shares {
        if !s.source.is_dir() {
            return Err(missing("share source", &s.source));
        }
    }
    if let Some(r) = &spec.rootfs {
        if !r.path.is_dir() {
            return Err(missing("rootfs", &r.path));
        }
    }
    Ok(())
}

/// A writable share a root daemon will not hand to a guest.
#[derive(Debug, thiserror::Error)]
pub enum ShareOwnerError {
    #[error("cannot read the owner of {}", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the writable {what} {} belongs to root: the guest writes a share as the share's owner, and never as root on the host; give it to an unprivileged user (chown USER {}) or make it read-only", path.display(), path.display())]
    RootOwned { what: &'static str, path: PathBuf },
}

/// Who each writable share (and a writable root directory) is written as
/// when the daemon runs as root: the directory's owner, which must not be
/// root. An ordinary user's daemon writes shares as that user already.
pub fn share_owners(
    spec: &skiff_spec::VmSpec,
) -> Result<std::collections::BTreeMap<PathBuf, skiff_vmm::Owner>, ShareOwnerError> {
    use std::os::unix::fs::MetadataExt;
    let mut owners = std::collections::BTreeMap::new();
    if !nix::unistd::geteuid().is_root() {
        return Ok(owners);
    }
    let writable = spec
        .shares
        .iter()
        .filter(|s| !s.readonly)
        .map(|s| ("share", &s.source))
        .chain(
            spec.rootfs
                .iter()
                .filter(|r| r.writable)
                .map(|r| ("rootfs", &r.path)),
        );
    for (what, path) in writable {
        let meta = std::fs::metadata(path).map_err(|source| ShareOwnerError::Stat {
            path: path.clone(),
            source,
        })?;
        if meta.uid() == 0 {
            return Err(ShareOwnerError::RootOwned {
                what,
                path: path.clone(),
            });
        }
        owners.insert(
            path.clone(),
            skiff_vmm::Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            },
        );
    }
    Ok(owners)
}

/// The read-only config drive: `instance.json` with what the guest may want
/// to know about itself.
fn config_drive(
    host: &dyn HostOps,
    rec: &VmRecord,
    vm_dir: &Path,
    label: &'static str,
) -> Result<Drive, DriveError> {
    let staging = vm_dir.join("config");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io("create", &staging))?;
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
    let file = staging.join("instance.json");
    let json = serde_json::to_vec_pretty(&instance).map_err(std::io::Error::from);
    json.and_then(|bytes| std::fs::write(&file, bytes))
        .map_err(io("write", &file))?;
    let identity = identity(&rec.spec);
    if identity != skiff_proto::guest::Identity::default() {
        let file = staging.join(skiff_proto::guest::IDENTITY_FILE);
        let json = serde_json::to_vec_pretty(&identity).map_err(std::io::Error::from);
        json.and_then(|bytes| std::fs::write(&file, bytes))
            .map_err(io("write", &file))?;
    }
    let image = vm_dir.join("config.ext4");
    host.make_ext4(label, Some(&staging), &image, 4, false)
        .map_err(|source| DriveError::Build {
            what: "config",
            source,
        })?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(Drive {
        path: image,
        mount: MountArg {
            label: label.into(),
            target: CONFIG_MOUNT.into(),
            readonly: true,
            noexec: true,
            nosuid: true,
            nodev: true,
        },
    })
}

/// The guest's identity as the spec gives it (the agent applies it).
pub fn identity(spec: &skiff_spec::VmSpec) -> skiff_proto::guest::Identity {
    skiff_proto::guest::Identity {
        hostname: spec.hostname.clone(),
        timezone: spec.timezone.clone(),
        users: spec
            .users
            .iter()
            .map(|u| skiff_proto::guest::GuestUser {
                name: u.name.clone(),
                ssh_authorized_keys: u.ssh_authorized_keys.clone(),
                sudo: u.sudo,
            })
            .collect(),
    }
}

/// The spec's `image` is not in the image cache.
#[derive(Debug, thiserror::Error)]
#[error("no image named {0:?}; build one with `skiff image build -f images/{0}.toml`")]
pub struct NoImage(pub String);

/// Where the spec's `image` is in the image cache (None: no image).
pub fn image_root(spec: &skiff_spec::VmSpec, cache: &Path) -> Result<Option<PathBuf>, NoImage> {
    let Some(name) = &spec.image else {
        return Ok(None);
    };
    let info = skiff_oci::find_image(cache, name).ok_or_else(|| NoImage(name.clone()))?;
    Ok(Some(info.root))
}

#[cfg(test)]
mod tests {
    use super::{read_secret_file, volume_label, SecretFileError, MAX_SECRET_BYTES};
    use std::path::Path;

    #[test]
    fn secret_files_must_be_regular_and_small() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, b"s3cret").expect("write");
        assert_eq!(read_secret_file(&token).expect("read"), b"s3cret");

        // /dev/zero would be read forever; a FIFO with no writer would hang.
        let r = read_secret_file(Path::new("/dev/zero"));
        assert!(matches!(r, Err(SecretFileError::NotRegular)), "{r:?}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let r = read_secret_file(&fifo);
        assert!(matches!(r, Err(SecretFileError::NotRegular)), "{r:?}");
        let r = read_secret_file(dir.path());
        assert!(matches!(r, Err(SecretFileError::NotRegular)), "{r:?}");

        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).expect("create");
        f.set_len(MAX_SECRET_BYTES + 1).expect("grow");
        let r = read_secret_file(&big);
        assert!(matches!(r, Err(SecretFileError::TooLarge)), "{r:?}");
        let msg = r.expect_err("too large").to_string();
        assert!(msg.contains("larger than 1048576 bytes"), "{msg}");
    }

    #[test]
    fn volume_labels_fit_ext4_and_differ_by_name() {
        assert_eq!(volume_label("data").len(), 12);
        assert_ne!(volume_label("data"), volume_label("data2"));
        assert_eq!(volume_label("data"), volume_label("data"));
    }
}
