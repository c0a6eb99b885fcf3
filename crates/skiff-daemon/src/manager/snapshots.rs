//! Snapshots by tag: a pausable VM's saved state kept under a name, from
//! which new VMs start instead of booting, each with its own identity
//! (name, id, address, MAC, entropy, clock; see [`skiff_proto::Renewal`]).
//!
//! A snapshot is a directory of the state directory: the saved state and
//! its manifest (hard links of a pause's files, so taking one costs no
//! copy), the config drive the guest has mounted, and `snapshot.json`. A VM
//! started from one gets the same files in `restore/` of its own
//! directory; its boot restores them instead of booting the kernel, once.

use crate::manager::{Conflict, Invalid, Manager, ManagerError, Missing};
use crate::store::{VmRecord, VmState};
use skiff_vmm::snapshot;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const META: &str = "snapshot.json";
const STATE: &str = "state.bin";
const CONFIG_DRIVE: &str = "config.ext4";
/// Where a VM keeps what its next boot restores.
const RESTORE_DIR: &str = "restore";

/// What a boot restores instead of booting.
pub(super) struct PendingRestore {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub config_drive: PathBuf,
}

impl PendingRestore {
    /// Done with: the VM's next boots are cold ones.
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The restore a VM's next boot does, if it was started from a snapshot.
pub(super) fn pending_restore(vm_dir: &Path) -> Option<PendingRestore> {
    let dir = vm_dir.join(RESTORE_DIR);
    let state = dir.join(STATE);
    state.is_file().then(|| PendingRestore {
        config_drive: dir.join(CONFIG_DRIVE),
        state,
        dir,
    })
}

/// Hard-link `from` to `to`, or copy it where a link cannot be made.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(drop))
}

/// The saved state, its manifest and the config drive, from `from` into a
/// new directory `to`.
fn place_state(state: &Path, config_drive: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    link_or_copy(state, &to.join(STATE))?;
    link_or_copy(
        &snapshot::manifest_path(state),
        &snapshot::manifest_path(&to.join(STATE)),
    )?;
    // Copied: a boot writes the VM's config drive again.
    std::fs::copy(config_drive, to.join(CONFIG_DRIVE)).map(drop)
}

/// A snapshot's tag while it is taken: `TAG.partial`, removed unless
/// [`Reservation::complete`] renamed it to `TAG`.
struct Reservation {
    partial: PathBuf,
    dir: PathBuf,
    done: bool,
}

impl Reservation {
    fn take(dir: &Path, partial: &Path) -> Result<Reservation, ManagerError> {
        let tag = dir.file_name().map(|t| t.to_string_lossy().into_owned());
        let conflict = || Conflict::SnapshotExists(tag.clone().unwrap_or_default());
        if dir.exists() {
            return Err(conflict().into());
        }
        if let Some(root) = partial.parent() {
            std::fs::create_dir_all(root)
                .map_err(|e| ManagerError::internal("make the snapshots directory", e))?;
        }
        match std::fs::create_dir(partial) {
            Ok(()) => Ok(Reservation {
                partial: partial.to_owned(),
                dir: dir.to_owned(),
                done: false,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(conflict().into()),
            Err(e) => Err(ManagerError::internal("reserve the snapshot's tag", e)),
        }
    }

    /// In place under its tag (the rename fails if one got there first).
    fn complete(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.partial, &self.dir)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.partial);
        }
    }
}

/// Snapshots a daemon that died left half taken.
pub(super) fn remove_partial_snapshots(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir.join("snapshots")) else {
        return;
    };
    for e in entries.flatten() {
        if e.path().extension().is_some_and(|x| x == "partial") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Manager {
    fn snapshot_dir(&self, tag: &str) -> PathBuf {
        self.paths.state_dir.join("snapshots").join(tag)
    }

    /// Save VM `name` under `tag`. A running VM is paused for the save and
    /// resumed at once; a paused one's state is taken as it is.
    pub async fn snapshot(
        self: &Arc<Self>,
        name: &str,
        tag: &str,
    ) -> Result<skiff_api::Snapshot, ManagerError> {
        skiff_spec::check_name(tag).map_err(|source| Invalid::Name {
            field: "snapshot tag",
            source,
        })?;
        let dir = self.snapshot_dir(tag);
        // The tag is reserved by making `TAG.partial`: of two snapshots
        // under one tag at once, one gets it, the other a conflict.
        let partial = dir.with_extension("partial");
        let reserved = Reservation::take(&dir, &partial)?;
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        let rec = self.get(name)?;
        if !rec.spec.volumes.is_empty() || rec.spec.data.is_some() || rec.spec.disk.is_some() {
            return Err(Invalid::SnapshotDisks(name.to_owned()).into());
        }
        let was_running = match rec.state {
            VmState::Running => {
                let why = format!("for snapshot {tag}");
                Box::pin(self.pause_locked_because(name, &why)).await?;
                true
            }
            VmState::Paused => false,
            state => {
                return Err(ManagerError::WrongState {
                    name: name.to_owned(),
                    action: "snapshot",
                    state: state.as_str(),
                })
            }
        };
        let vm_dir = self.paths.vm_dir(name);
        let state = super::pause::snapshot_file(&vm_dir);
        let placed = snapshot::check(&state)
            .map_err(|e| ManagerError::internal("read the saved state", e))
            .and_then(|manifest| {
                let info = skiff_api::Snapshot {
                    tag: tag.to_owned(),
                    vm: name.to_owned(),
                    spec: clone_spec(&rec.spec, tag),
                    created_at: crate::store::now(),
                    size: manifest.size,
                };
                place_state(&state, &vm_dir.join(CONFIG_DRIVE), &partial)
                    .and_then(|()| {
                        let text =
                            serde_json::to_vec_pretty(&info).map_err(std::io::Error::other)?;
                        std::fs::write(partial.join(META), text)
                    })
                    .and_then(|()| reserved.complete())
                    .map_err(|e| ManagerError::internal(format!("keep snapshot {tag}"), e))
                    .map(|()| info)
            });
        if was_running {
            // The VM goes on whether or not the snapshot was kept.
            if let Err(e) = Box::pin(self.resume_locked(name)).await {
                let kept = if placed.is_ok() {
                    format!("resume {name} after snapshot {tag} was kept")
                } else {
                    format!("resume {name} after snapshot {tag} failed")
                };
                return Err(ManagerError::internal(kept, e));
            }
        }
        placed
    }

    pub fn snapshots(&self) -> Result<Vec<skiff_api::Snapshot>, ManagerError> {
        let root = self.paths.state_dir.join("snapshots");
        let Ok(entries) = std::fs::read_dir(&root) else {
            return Ok(Vec::new());
        };
        let mut all: Vec<skiff_api::Snapshot> = entries
            .flatten()
            // Not one being taken (`TAG.partial`), nor anything else.
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| skiff_spec::check_name(n).is_ok())
            })
            .filter_map(|e| std::fs::read(e.path().join(META)).ok())
            .filter_map(|text| serde_json::from_slice(&text).ok())
            .collect();
        all.sort_by(|a, b| a.tag.cmp(&b.tag));
        Ok(all)
    }

    fn snapshot_info(&self, tag: &str) -> Result<skiff_api::Snapshot, ManagerError> {
        skiff_spec::check_name(tag).map_err(|source| Invalid::Name {
            field: "snapshot tag",
            source,
        })?;
        let text = std::fs::read(self.snapshot_dir(tag).join(META))
            .map_err(|_| Missing::Snapshot(tag.to_owned()))?;
        serde_json::from_slice(&text).map_err(|e| {
            ManagerError::internal(
                format!("read snapshot {tag}"),
                format!("its {META} is damaged ({e}); remove it with `skiff snapshot rm {tag}`"),
            )
        })
    }

    /// VMs started from it keep their own copies: removing it ends none.
    pub fn remove_snapshot(&self, tag: &str) -> Result<(), ManagerError> {
        skiff_spec::check_name(tag).map_err(|source| Invalid::Name {
            field: "snapshot tag",
            source,
        })?;
        let dir = self.snapshot_dir(tag);
        if !dir.is_dir() {
            return Err(Missing::Snapshot(tag.to_owned()).into());
        }
        std::fs::remove_dir_all(&dir)
            .map_err(|e| ManagerError::internal(format!("remove snapshot {tag}"), e))
    }

    /// A new VM from snapshot `tag`, started: restored, then renewed. On
    /// any failure nothing of it is left.
    pub async fn start_from_snapshot(
        self: &Arc<Self>,
        tag: &str,
        name: Option<&str>,
    ) -> Result<VmRecord, ManagerError> {
        let info = self.snapshot_info(tag)?;
        let dir = self.snapshot_dir(tag);
        snapshot::check(&dir.join(STATE)).map_err(|source| {
            ManagerError::from(Invalid::Snapshot {
                tag: tag.to_owned(),
                source,
            })
        })?;
        let id = crate::paths::new_vm_id();
        // TAG-XXXXXX, within a name's 63 characters.
        let stem = tag[..tag.len().min(56)].trim_end_matches('-');
        let name = name.map_or_else(|| format!("{stem}-{}", &id[..6]), str::to_owned);
        let mut spec = info.spec.clone();
        spec.name = name.clone();
        self.create_vm(&spec, &id, false)?;
        let placed = place_state(
            &dir.join(STATE),
            &dir.join(CONFIG_DRIVE),
            &self.paths.vm_dir(&name).join(RESTORE_DIR),
        );
        let started = match placed {
            Ok(()) => self.start(&name).await,
            Err(e) => Err(ManagerError::internal(format!("copy snapshot {tag}"), e)),
        };
        if started.is_err() {
            let _ = self.remove(&name, true, false).await;
        }
        started
    }
}

impl Manager {
    /// The second half of a boot from a snapshot: QEMU runs, waiting for
    /// the stream; load it, then give the guest its own identity.
    pub(super) async fn restore_started(
        &self,
        rec: &VmRecord,
        plan: &crate::resolve::VmPlan,
        restore: &PendingRestore,
        qemu: skiff_vmm::ProcessRef,
    ) -> Result<(), super::boot::BootError> {
        use super::boot::BootError;
        let manifest = snapshot::check(&restore.state).map_err(BootError::Restore)?;
        let qmp = plan.launch.run_dir.join(skiff_vmm::plan::MONITOR_SOCKET);
        super::pause::restore_into(&qmp, &restore.state, &manifest, qemu)
            .await
            .map_err(BootError::Restore)?;
        let renewal = renewal(rec, plan).map_err(BootError::Renew)?;
        super::pause::ask_agent(&plan.launch.run_dir, skiff_proto::Message::Renew(renewal))
            .await
            .map_err(BootError::Renew)
    }
}

/// The identity of the VM `rec`, for its guest restored from another's state.
fn renewal(rec: &VmRecord, plan: &crate::resolve::VmPlan) -> Result<skiff_proto::Renewal, String> {
    use std::io::Read;
    let mut seed = vec![0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let net = plan.config.tap.as_ref().map(|tap| skiff_proto::RenewedNet {
        mac: skiff_vmm::usernet::mac_for(&rec.id),
        address: tap.address.clone(),
        gateway: tap.gateway.parse().ok(),
        dns: tap.dns.as_deref().and_then(|d| d.parse().ok()),
    });
    Ok(skiff_proto::Renewal {
        time_ns: super::pause::host_time_ns()?,
        seed,
        hostname: rec.spec.hostname.clone(),
        net,
    })
}

/// What a VM started from a snapshot of `spec` is: the same machine, but
/// nothing that names one VM alone (a fixed address, host ports, domains)
/// and no autostart.
fn clone_spec(spec: &skiff_spec::VmSpec, tag: &str) -> skiff_spec::VmSpec {
    let mut spec = spec.clone();
    spec.name = tag.to_owned();
    for nic in &mut spec.network {
        nic.address = None;
    }
    spec.forward_ports.clear();
    spec.http = None;
    spec.autostart = false;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_the_machine_and_drops_what_names_one_vm() {
        let text = "[vm.src]\npausable = true\nmemory = \"512M\"\nautostart = true\nforward_ports = [\"8080:80\"]\nnetwork = { mode = \"bridge\", network = \"web\", address = \"10.88.0.9\" }\n[vm.src.http]\ndomains = [\"a.test\"]\nport = 80\n";
        let spec = skiff_spec::parse_file(text).expect("spec").remove(0);
        let clone = clone_spec(&spec, "base");
        assert_eq!(clone.name, "base");
        assert_eq!(clone.memory_mib, 512);
        assert!(clone.pausable);
        assert_eq!(clone.network[0].network.as_deref(), Some("web"));
        assert_eq!(clone.network[0].address, None);
        assert!(clone.forward_ports.is_empty() && clone.http.is_none() && !clone.autostart);
    }

    #[test]
    fn a_tag_being_taken_is_reserved_and_released_unless_completed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("snapshots").join("base");
        let partial = dir.with_extension("partial");
        let first = Reservation::take(&dir, &partial).expect("first");
        let second = Reservation::take(&dir, &partial);
        assert!(
            matches!(second, Err(ManagerError::Conflict(Conflict::SnapshotExists(ref t))) if t == "base"),
            "the second snapshot under one tag is refused"
        );
        drop(first);
        assert!(!partial.exists(), "an abandoned one is removed");
        let again = Reservation::take(&dir, &partial).expect("free again");
        std::fs::write(partial.join(META), b"{}").expect("write");
        again.complete().expect("complete");
        assert!(dir.join(META).is_file() && !partial.exists());
        assert!(Reservation::take(&dir, &partial).is_err(), "taken for good");
        // A daemon that died mid-snapshot left one half taken.
        std::fs::create_dir(tmp.path().join("snapshots").join("x.partial")).expect("mkdir");
        remove_partial_snapshots(tmp.path());
        assert!(!tmp.path().join("snapshots").join("x.partial").exists());
        assert!(dir.is_dir(), "complete ones stay");
    }

    #[test]
    fn placed_state_is_linked_and_the_config_drive_copied() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = tmp.path().join("state.bin");
        std::fs::write(&state, b"saved").expect("write");
        std::fs::write(snapshot::manifest_path(&state), b"{}").expect("write");
        let drive = tmp.path().join("config.ext4");
        std::fs::write(&drive, b"drive").expect("write");
        let to = tmp.path().join("snap");
        place_state(&state, &drive, &to).expect("place");
        let pending = pending_restore(tmp.path().join("x").as_path());
        assert!(pending.is_none());
        std::fs::rename(&to, tmp.path().join(RESTORE_DIR)).expect("rename");
        let pending = pending_restore(tmp.path()).expect("pending");
        assert_eq!(std::fs::read(&pending.state).expect("read"), b"saved");
        assert_eq!(
            std::fs::read(&pending.config_drive).expect("read"),
            b"drive"
        );
        // The state is the same file; the drive a copy of its own.
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| std::fs::metadata(p).expect("meta").ino();
        assert_eq!(ino(&pending.state), ino(&state));
        assert_ne!(ino(&pending.config_drive), ino(&drive));
        pending.discard();
        assert!(pending_restore(tmp.path()).is_none());
    }
}
