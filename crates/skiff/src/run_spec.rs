//! What `skiff run` asks for, and the VM spec it stands for. The same
//! request goes to the daemon (`POST /v1/run`) or is booted in-process with
//! `--standalone`; both turn it into a [`VmSpec`] here, so a run's VM is
//! planned exactly like a VM from a spec file.

use serde::{Deserialize, Serialize};
use skiff_spec::{
    Accel, Egress, KernelSpec, NetMode, NetworkSpec, RootFsSpec, Share, VmSpec, MAX_MEMORY_MIB,
    MAX_VCPUS, MIN_MEMORY_MIB,
};
use std::path::PathBuf;

/// The flags of `skiff run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    pub argv: Vec<String>,
    pub cpus: u32,
    pub memory_mib: u32,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// "auto", "kvm" or "tcg".
    pub accel: String,
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub modules: Option<PathBuf>,
    pub boot_timeout_secs: u64,
    #[serde(default)]
    pub quiet: bool,
    #[serde(default)]
    pub stdin: bool,
    /// "none" (default), "user", or the name of a managed network.
    #[serde(default)]
    pub net: Option<String>,
    /// Port forwards as `[ADDR:]HOST:GUEST[/tcp|/udp]`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Host directories to share (absolute paths on the daemon's host).
    #[serde(default)]
    pub shares: Vec<RunShare>,
    /// A host directory to boot into instead of the default image.
    #[serde(default)]
    pub rootfs: Option<RunRootFs>,
}

/// `-v HOST_DIR:GUEST_PATH[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunShare {
    pub source: PathBuf,
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
}

/// `--rootfs DIR [--rootfs-rw]`, or the directory of `--image NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRootFs {
    pub source: PathBuf,
    #[serde(default)]
    pub writable: bool,
}

/// The longest boot timeout a run may ask for.
const MAX_BOOT_TIMEOUT_SECS: u64 = 3600;

impl RunBody {
    /// How long the guest may take to become ready.
    pub fn boot_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.boot_timeout_secs.clamp(1, MAX_BOOT_TIMEOUT_SECS))
    }

    /// The accelerator asked for.
    pub fn accel_choice(&self) -> Result<skiff_vmm::AccelChoice, String> {
        self.accel.parse()
    }
}

fn unknown_network(name: &str) -> String {
    format!("unknown network {name:?}; use none, user, or the name of a network (skiff network ls)")
}

/// The VM a run boots, named `name`; every problem of the request is
/// reported with what to do instead. Checks form only (absolute paths,
/// ranges); whether directories exist is checked when the VM is prepared.
pub fn run_spec(name: &str, body: &RunBody) -> Result<VmSpec, String> {
    if body.argv.is_empty() {
        return Err("no command given; usage: skiff run [OPTIONS] -- COMMAND [ARGS...]".into());
    }
    if body.cpus == 0 || body.cpus > MAX_VCPUS {
        return Err(format!(
            "cpus: {} is out of range; allowed: 1 to {MAX_VCPUS}",
            body.cpus
        ));
    }
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&body.memory_mib) {
        return Err(format!(
            "memory: {} MiB is out of range; allowed: {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB}",
            body.memory_mib
        ));
    }
    let mut spec = VmSpec::with_defaults(name);
    spec.vcpus = body.cpus;
    spec.memory_mib = body.memory_mib;
    spec.accel = match body.accel_choice()? {
        skiff_vmm::AccelChoice::Auto => Accel::Auto,
        skiff_vmm::AccelChoice::Kvm => Accel::Kvm,
        skiff_vmm::AccelChoice::Tcg => Accel::Tcg,
    };
    if body.kernel.is_some() || body.modules.is_some() {
        for p in [&body.kernel, &body.modules].into_iter().flatten() {
            if !p.is_absolute() {
                return Err(format!("{} is not an absolute path", p.display()));
            }
        }
        spec.kernel = Some(KernelSpec {
            path: body.kernel.clone(),
            modules: body.modules.clone(),
            params: Vec::new(),
        });
    }
    spec.forward_ports = body
        .publish
        .iter()
        .map(|p| skiff_spec::parse_forward(p))
        .collect::<Result<Vec<_>, _>>()?;
    let nic = |mode, network: Option<&str>| NetworkSpec {
        mode,
        network: network.map(str::to_owned),
        address: None,
        egress: Egress::All,
    };
    spec.network = match body.net.as_deref() {
        None if spec.forward_ports.is_empty() => Vec::new(),
        None | Some("user") => vec![nic(NetMode::User, None)],
        Some("none") if spec.forward_ports.is_empty() => Vec::new(),
        Some("none") => {
            return Err("port forwards need a network; use --net user or a network's name".into())
        }
        Some(name) if skiff_net::check_network_name(name).is_ok() => {
            vec![nic(NetMode::Bridge, Some(name))]
        }
        Some(name) => return Err(unknown_network(name)),
    };
    for (i, s) in body.shares.iter().enumerate() {
        if !s.source.is_absolute() || !s.target.starts_with('/') {
            return Err(format!(
                "share {} -> {}: give an absolute host directory and an absolute guest path",
                s.source.display(),
                s.target
            ));
        }
        spec.shares.push(Share {
            source: s.source.clone(),
            target: s.target.clone(),
            tag: format!("share{i}"),
            readonly: s.readonly,
        });
    }
    if let Some(r) = &body.rootfs {
        if !r.source.is_absolute() {
            return Err(format!(
                "rootfs {} is not an absolute path",
                r.source.display()
            ));
        }
        spec.rootfs = Some(RootFsSpec {
            path: r.source.clone(),
            writable: r.writable,
        });
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> RunBody {
        RunBody {
            argv: vec!["true".into()],
            cpus: 2,
            memory_mib: 512,
            env: Vec::new(),
            workdir: None,
            accel: "tcg".into(),
            kernel: None,
            modules: None,
            boot_timeout_secs: 0,
            quiet: false,
            stdin: false,
            net: None,
            publish: Vec::new(),
            shares: Vec::new(),
            rootfs: None,
        }
    }

    #[test]
    fn a_plain_run_is_a_default_vm_with_its_size() {
        let spec = run_spec("run-1", &body()).expect("spec");
        let mut want = VmSpec::with_defaults("run-1");
        want.vcpus = 2;
        want.memory_mib = 512;
        want.accel = Accel::Tcg;
        assert_eq!(spec, want);
        assert_eq!(body().boot_timeout().as_secs(), 1);
    }

    #[test]
    fn networks_forwards_shares_and_rootfs_map_to_spec_fields() {
        let b = RunBody {
            publish: vec!["8080:80".into()],
            shares: vec![RunShare {
                source: "/src".into(),
                target: "/work".into(),
                readonly: true,
            }],
            rootfs: Some(RunRootFs {
                source: "/images/py".into(),
                writable: false,
            }),
            kernel: Some("/k/vmlinuz".into()),
            ..body()
        };
        let spec = run_spec("run-2", &b).expect("spec");
        assert_eq!(spec.network.len(), 1);
        assert_eq!(spec.network[0].mode, NetMode::User, "-p implies --net user");
        assert_eq!(spec.forward_ports[0].host_port, 8080);
        assert_eq!(spec.shares[0].tag, "share0");
        assert!(spec.shares[0].readonly);
        assert_eq!(spec.rootfs.as_ref().map(|r| r.writable), Some(false));
        assert_eq!(
            spec.kernel.and_then(|k| k.path),
            Some(PathBuf::from("/k/vmlinuz"))
        );
        let lan = run_spec(
            "run-3",
            &RunBody {
                net: Some("lan".into()),
                ..body()
            },
        )
        .expect("spec");
        assert_eq!(lan.network[0].mode, NetMode::Bridge);
        assert_eq!(lan.network[0].network.as_deref(), Some("lan"));
    }

    #[test]
    fn bad_requests_say_what_to_do() {
        let cases: [(RunBody, &str); 7] = [
            (
                RunBody {
                    argv: vec![],
                    ..body()
                },
                "no command given",
            ),
            (RunBody { cpus: 0, ..body() }, "cpus: 0 is out of range"),
            (
                RunBody {
                    memory_mib: 10,
                    ..body()
                },
                "memory: 10 MiB is out of range",
            ),
            (
                RunBody {
                    accel: "fast".into(),
                    ..body()
                },
                "fast",
            ),
            (
                RunBody {
                    net: Some("none".into()),
                    publish: vec!["80:80".into()],
                    ..body()
                },
                "port forwards need a network",
            ),
            (
                RunBody {
                    net: Some("Bad Name".into()),
                    ..body()
                },
                "unknown network",
            ),
            (
                RunBody {
                    shares: vec![RunShare {
                        source: "rel".into(),
                        target: "/x".into(),
                        readonly: false,
                    }],
                    ..body()
                },
                "absolute host directory",
            ),
        ];
        for (b, want) in cases {
            let err = run_spec("run-x", &b).expect_err(want);
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }
}
