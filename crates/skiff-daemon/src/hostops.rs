//! Privileged host operations behind one trait: links, TAPs and bridges
//! (netlink), nftables rules, cgroups, ext4 images. The daemon does them
//! through [`HostOps`]; [`LinuxHost`] does them for real (the end-to-end
//! tests exercise it), [`RecordingHost`] records them and can fail one on
//! purpose, so that setup and the teardown after a failure half-way are
//! unit-tested without root.

use skiff_net::link::Netlink;
use skiff_net::NetError;
use skiff_vmm::cgroup::{Hierarchy, Limits, VmCgroup};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

pub type HostFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, HostError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot set the VM's host limits (cgroup {name})")]
    Cgroup {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot put the VM's processes in their systemd scope {name}")]
    Scope {
        name: String,
        #[source]
        source: skiff_vmm::scope::ScopeError,
    },
    #[error("cannot make the copy-on-write disk {}", path.display())]
    Overlay {
        path: PathBuf,
        #[source]
        source: skiff_image::Error,
    },
    #[error("cannot make the ext4 image {}", path.display())]
    Mkfs {
        path: PathBuf,
        #[source]
        source: skiff_image::Error,
    },
    /// A failure the recording fake was told to produce.
    #[error("{op} failed (injected by the test)")]
    Injected { op: String },
}

/// What the daemon asks of the host.
pub trait HostOps: Send + Sync {
    /// Fail early, with what to do, when managed networks are impossible.
    fn require_net_admin(&self, what: &str) -> Result<(), HostError>;
    fn link_exists<'a>(&'a self, name: &'a str) -> HostFuture<'a, bool>;
    fn create_bridge<'a>(
        &'a self,
        name: &'a str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> HostFuture<'a, ()>;
    /// Create a persistent TAP and put it on `bridge`.
    fn create_tap<'a>(&'a self, name: &'a str, bridge: &'a str) -> HostFuture<'a, ()>;
    /// Delete a link; false if there was none.
    fn delete_link<'a>(&'a self, name: &'a str) -> HostFuture<'a, bool>;
    fn links_with_prefix<'a>(&'a self, prefix: &'a str) -> HostFuture<'a, Vec<String>>;
    fn enable_ip_forwarding(&self) -> Result<(), HostError>;
    /// Apply an nftables script in one transaction; `what` names it in errors.
    fn apply_rules(&self, script: &str, what: &str) -> Result<(), HostError>;
    /// Networks that have an nftables table.
    fn networks_with_tables(&self) -> Result<Vec<String>, HostError>;
    /// Create the cgroup `name` with `limits` and move `pids` into it.
    fn create_cgroup(&self, name: &str, limits: &Limits, pids: &[i32]) -> Result<(), HostError>;
    /// Remove the cgroup `name` once its processes are gone.
    fn remove_cgroup<'a>(&'a self, name: &'a str) -> HostFuture<'a, ()>;
    /// An ext4 image of `size_mib` labelled `label`, holding `contents`.
    fn make_ext4(
        &self,
        label: &str,
        contents: Option<&Path>,
        image: &Path,
        size_mib: u32,
        journal: bool,
    ) -> Result<(), HostError>;
    /// A qcow2 file at `overlay` whose backing file is `base` (never written).
    fn make_overlay(
        &self,
        base: &Path,
        kind: skiff_image::DiskKind,
        overlay: &Path,
    ) -> Result<(), HostError>;
}

/// Where a VM's limits go.
#[derive(Debug)]
pub enum LimitPlace {
    /// A cgroup of its own under the daemon's (no systemd as init).
    Cgroups(Hierarchy),
    /// A transient systemd scope per VM (systemd is init): outside the
    /// daemon's service, so VMs outlive its restart.
    Scopes,
    /// No usable cgroups: limits are off (said at start).
    Off,
}

/// The host itself.
pub struct LinuxHost {
    pub limits: LimitPlace,
    /// The scope of each VM's boot, by cgroup name (later processes of
    /// the boot are attached to it).
    scopes_started: Mutex<std::collections::HashMap<String, String>>,
}

impl LinuxHost {
    pub fn new(limits: LimitPlace) -> LinuxHost {
        LinuxHost {
            limits,
            scopes_started: Mutex::default(),
        }
    }

    pub fn detect() -> LinuxHost {
        let root = nix::unistd::geteuid().is_root();
        let under_systemd =
            skiff_vmm::scope::systemd_manages_cgroups(Path::new("/run/systemd/system"), root);
        let place = if under_systemd && skiff_vmm::scope::bus_present() {
            tracing::info!(
                "systemd is init: each VM runs in a scope of its own (skiff-vm-ID-N.scope)"
            );
            LimitPlace::Scopes
        } else if let Some(h) = skiff_vmm::cgroup::detect() {
            if under_systemd {
                tracing::warn!("systemd is init but no D-Bus system bus answers at {}: VMs get cgroups under the daemon's own, and stopping its unit stops them; install dbus", skiff_vmm::scope::SYSTEM_BUS);
            }
            LimitPlace::Cgroups(h)
        } else {
            tracing::warn!("no writable cgroup with the memory and cpu controllers: VMs run without host memory and CPU limits");
            LimitPlace::Off
        };
        LinuxHost::new(place)
    }

    fn cgroup(&self, name: &str) -> Option<VmCgroup> {
        let LimitPlace::Cgroups(h) = &self.limits else {
            return None;
        };
        // The directories do not depend on the limits.
        let (dirs, _) = skiff_vmm::cgroup::plan(h, name, &Limits::for_vm(64, 1));
        Some(VmCgroup { dirs })
    }

    fn scope(&self, name: &str, limits: &Limits, pids: &[i32]) -> Result<(), HostError> {
        use skiff_vmm::scope;
        let bus = Path::new(scope::SYSTEM_BUS);
        // The lock is not held across the call to systemd.
        let existing = self
            .scopes_started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        let (unit, result) = match existing {
            Some(unit) => {
                let call = scope::attach_call(bus, &unit, pids);
                let result = scope::run(&call, "attaching processes", &unit);
                (unit, result)
            }
            None => {
                let unit = scope::unit_name(name, skiff_vmm::console::unix_ms());
                let call = scope::start_call(bus, &unit, &format!("skiff VM {name}"), pids, limits);
                let result = scope::run(&call, "a scope", &unit);
                if result.is_ok() {
                    self.scopes_started
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name.to_owned(), unit.clone());
                }
                (unit, result)
            }
        };
        result.map_err(|source| HostError::Scope { name: unit, source })
    }
}

impl HostOps for LinuxHost {
    fn require_net_admin(&self, what: &str) -> Result<(), HostError> {
        Ok(skiff_net::require_net_admin(what)?)
    }

    fn link_exists<'a>(&'a self, name: &'a str) -> HostFuture<'a, bool> {
        Box::pin(async move { Ok(Netlink::connect()?.index_of(name).await?.is_some()) })
    }

    fn create_bridge<'a>(
        &'a self,
        name: &'a str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> HostFuture<'a, ()> {
        Box::pin(async move {
            Netlink::connect()?
                .create_bridge(name, gateway, prefix)
                .await?;
            Ok(())
        })
    }

    fn create_tap<'a>(&'a self, name: &'a str, bridge: &'a str) -> HostFuture<'a, ()> {
        Box::pin(async move {
            let nl = Netlink::connect()?;
            skiff_net::link::create_tap(name)?;
            if let Err(e) = nl.attach(name, bridge).await {
                let _ = nl.delete_link(name).await;
                return Err(e.into());
            }
            Ok(())
        })
    }

    fn delete_link<'a>(&'a self, name: &'a str) -> HostFuture<'a, bool> {
        Box::pin(async move { Ok(Netlink::connect()?.delete_link(name).await?) })
    }

    fn links_with_prefix<'a>(&'a self, prefix: &'a str) -> HostFuture<'a, Vec<String>> {
        Box::pin(async move { Ok(Netlink::connect()?.links_with_prefix(prefix).await?) })
    }

    fn enable_ip_forwarding(&self) -> Result<(), HostError> {
        let path = "/proc/sys/net/ipv4/ip_forward";
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            return Ok(());
        }
        std::fs::write(path, "1").map_err(|source| {
            HostError::Net(NetError::Io {
                what: format!("enable IPv4 forwarding ({path}) for NAT"),
                source,
            })
        })
    }

    fn apply_rules(&self, script: &str, what: &str) -> Result<(), HostError> {
        Ok(skiff_net::nft::apply(script, what)?)
    }

    fn networks_with_tables(&self) -> Result<Vec<String>, HostError> {
        Ok(skiff_net::nft::networks_with_tables()?)
    }

    fn create_cgroup(&self, name: &str, limits: &Limits, pids: &[i32]) -> Result<(), HostError> {
        let h = match &self.limits {
            LimitPlace::Cgroups(h) => h,
            LimitPlace::Scopes => return self.scope(name, limits, pids),
            LimitPlace::Off => return Ok(()),
        };
        let err = |source| HostError::Cgroup {
            name: name.to_owned(),
            source,
        };
        let cg = VmCgroup::create(h, name, limits).map_err(err)?;
        for pid in pids {
            cg.add(*pid).map_err(err)?;
        }
        Ok(())
    }

    fn remove_cgroup<'a>(&'a self, name: &'a str) -> HostFuture<'a, ()> {
        // systemd removes an emptied scope by itself; the VM's next boot
        // starts a new one.
        self.scopes_started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Box::pin(async move {
            let Some(cg) = self.cgroup(name) else {
                return Ok(());
            };
            // The kernel lets an emptied cgroup go only after its last task
            // has fully exited; give it a moment.
            for _ in 0..200 {
                cg.remove();
                if cg.dirs.iter().all(|d| !d.exists()) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        })
    }

    fn make_ext4(
        &self,
        label: &str,
        contents: Option<&Path>,
        image: &Path,
        size_mib: u32,
        journal: bool,
    ) -> Result<(), HostError> {
        skiff_image::make_ext4(label, contents, image, size_mib, journal).map_err(|source| {
            HostError::Mkfs {
                path: image.to_owned(),
                source,
            }
        })
    }

    fn make_overlay(
        &self,
        base: &Path,
        kind: skiff_image::DiskKind,
        overlay: &Path,
    ) -> Result<(), HostError> {
        skiff_image::make_overlay(base, kind, overlay).map_err(|source| HostError::Overlay {
            path: overlay.to_owned(),
            source,
        })
    }
}

/// One operation as [`RecordingHost`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    RequireNetAdmin,
    LinkExists(String),
    CreateBridge(String),
    CreateTap { tap: String, bridge: String },
    DeleteLink(String),
    ListLinks(String),
    EnableIpForwarding,
    ApplyRules(String),
    ListTables,
    CreateCgroup { name: String, pids: Vec<i32> },
    RemoveCgroup(String),
    MakeExt4 { label: String, image: PathBuf },
    MakeOverlay { base: PathBuf, overlay: PathBuf },
}

/// A host that records what it is asked and does nothing (but `make_ext4`,
/// which leaves an empty file where the image would be). `fail` makes the
/// first operation whose debug text contains the given text fail.
#[derive(Default)]
pub struct RecordingHost {
    pub ops: Mutex<Vec<Op>>,
    pub fail: Mutex<Option<String>>,
    /// Links that exist (bridges and TAPs created, minus deleted).
    links: Mutex<Vec<String>>,
}

impl RecordingHost {
    /// Fail the first operation whose `{:?}` contains `needle`.
    pub fn fail_on(&self, needle: &str) {
        *self.fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(needle.to_owned());
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn links(&self) -> Vec<String> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, op: Op) -> Result<(), HostError> {
        let text = format!("{op:?}");
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
        let mut fail = self.fail.lock().unwrap_or_else(|p| p.into_inner());
        if fail.as_deref().is_some_and(|n| text.contains(n)) {
            *fail = None;
            return Err(HostError::Injected { op: text });
        }
        Ok(())
    }

    fn set_link(&self, name: &str, present: bool) -> bool {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let had = links.iter().any(|l| l == name);
        links.retain(|l| l != name);
        if present {
            links.push(name.to_owned());
        }
        had
    }
}

impl HostOps for RecordingHost {
    fn require_net_admin(&self, _what: &str) -> Result<(), HostError> {
        self.record(Op::RequireNetAdmin)
    }

    fn link_exists<'a>(&'a self, name: &'a str) -> HostFuture<'a, bool> {
        Box::pin(async move {
            self.record(Op::LinkExists(name.to_owned()))?;
            Ok(self.links().iter().any(|l| l == name))
        })
    }

    fn create_bridge<'a>(
        &'a self,
        name: &'a str,
        _gateway: Ipv4Addr,
        _prefix: u8,
    ) -> HostFuture<'a, ()> {
        Box::pin(async move {
            self.record(Op::CreateBridge(name.to_owned()))?;
            self.set_link(name, true);
            Ok(())
        })
    }

    fn create_tap<'a>(&'a self, name: &'a str, bridge: &'a str) -> HostFuture<'a, ()> {
        Box::pin(async move {
            self.record(Op::CreateTap {
                tap: name.to_owned(),
                bridge: bridge.to_owned(),
            })?;
            self.set_link(name, true);
            Ok(())
        })
    }

    fn delete_link<'a>(&'a self, name: &'a str) -> HostFuture<'a, bool> {
        Box::pin(async move {
            self.record(Op::DeleteLink(name.to_owned()))?;
            Ok(self.set_link(name, false))
        })
    }

    fn links_with_prefix<'a>(&'a self, prefix: &'a str) -> HostFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.record(Op::ListLinks(prefix.to_owned()))?;
            Ok(self
                .links()
                .into_iter()
                .filter(|l| l.starts_with(prefix))
                .collect())
        })
    }

    fn enable_ip_forwarding(&self) -> Result<(), HostError> {
        self.record(Op::EnableIpForwarding)
    }

    fn apply_rules(&self, _script: &str, what: &str) -> Result<(), HostError> {
        self.record(Op::ApplyRules(what.to_owned()))
    }

    fn networks_with_tables(&self) -> Result<Vec<String>, HostError> {
        self.record(Op::ListTables)?;
        Ok(Vec::new())
    }

    fn create_cgroup(&self, name: &str, _limits: &Limits, pids: &[i32]) -> Result<(), HostError> {
        self.record(Op::CreateCgroup {
            name: name.to_owned(),
            pids: pids.to_vec(),
        })
    }

    fn remove_cgroup<'a>(&'a self, name: &'a str) -> HostFuture<'a, ()> {
        Box::pin(async move { self.record(Op::RemoveCgroup(name.to_owned())) })
    }

    fn make_ext4(
        &self,
        label: &str,
        _contents: Option<&Path>,
        image: &Path,
        _size_mib: u32,
        _journal: bool,
    ) -> Result<(), HostError> {
        self.record(Op::MakeExt4 {
            label: label.to_owned(),
            image: image.to_owned(),
        })?;
        empty_file(image).map_err(|source| HostError::Mkfs {
            path: image.to_owned(),
            source,
        })
    }

    fn make_overlay(
        &self,
        base: &Path,
        _kind: skiff_image::DiskKind,
        overlay: &Path,
    ) -> Result<(), HostError> {
        self.record(Op::MakeOverlay {
            base: base.to_owned(),
            overlay: overlay.to_owned(),
        })?;
        empty_file(overlay).map_err(|source| HostError::Overlay {
            path: overlay.to_owned(),
            source,
        })
    }
}

/// Where the recording host "makes" an image: an empty file, so that code
/// checking for the file finds it.
fn empty_file(path: &Path) -> Result<(), skiff_image::Error> {
    std::fs::write(path, b"").map_err(|source| skiff_image::Error::Io {
        action: "create",
        path: path.to_owned(),
        source,
    })
}
