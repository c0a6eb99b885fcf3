//! The VM spec a `skiff run` request stands for. The same request goes to
//! the daemon (`POST /v1/run`) or is booted in-process with `--standalone`;
//! both turn it into a [`VmSpec`] here, so a run's VM is planned exactly
//! like a VM from a spec file.

use skiff_spec::{
    Egress, KernelSpec, NetMode, NetworkSpec, RootFsSpec, Share, VmSpec, MAX_MEMORY_MIB, MAX_VCPUS,
    MIN_MEMORY_MIB,
};
use std::path::PathBuf;

pub use skiff_api::{RunBody, RunRootFs, RunShare};

/// What is wrong with a run request, and what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum RunSpecError {
    #[error("no command given; usage: skiff run [OPTIONS] -- COMMAND [ARGS...]")]
    NoCommand,
    #[error("cpus: {0} is out of range; allowed: 1 to {MAX_VCPUS}")]
    Cpus(u32),
    #[error("memory: {0} MiB is out of range; allowed: {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB}")]
    Memory(u32),
    #[error("{} is not an absolute path", .0.display())]
    RelativeKernel(PathBuf),
    #[error(transparent)]
    Forward(#[from] skiff_spec::ForwardError),
    #[error("port forwards need a network; use --net user or a network's name")]
    ForwardWithoutNetwork,
    #[error("unknown network {0:?}; use none, user, or the name of a network (skiff network ls)")]
    UnknownNetwork(String),
    #[error("share {} -> {target}: give an absolute host directory and an absolute guest path", path.display())]
    RelativeShare { path: PathBuf, target: String },
    #[error("rootfs {} is not an absolute path", .0.display())]
    RelativeRootfs(PathBuf),
}

/// The VM a run boots, named `name`; every problem of the request is
/// reported with what to do instead. Checks form only (absolute paths,
/// ranges); whether directories exist is checked when the VM is prepared.
pub fn run_spec(name: &str, body: &RunBody) -> Result<VmSpec, RunSpecError> {
    if body.argv.is_empty() {
        return Err(RunSpecError::NoCommand);
    }
    if body.cpus == 0 || body.cpus > MAX_VCPUS {
        return Err(RunSpecError::Cpus(body.cpus));
    }
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&body.memory_mib) {
        return Err(RunSpecError::Memory(body.memory_mib));
    }
    let mut spec = VmSpec::with_defaults(name);
    spec.vcpus = body.cpus;
    spec.memory_mib = body.memory_mib;
    spec.accel = body.accel;
    if body.kernel.is_some() || body.modules.is_some() {
        for p in [&body.kernel, &body.modules].into_iter().flatten() {
            if !p.is_absolute() {
                return Err(RunSpecError::RelativeKernel(p.clone()));
            }
        }
        spec.kernel = Some(KernelSpec {
            path: body.kernel.clone(),
            modules: body.modules.clone(),
            initrd: None,
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
        Some("none") => return Err(RunSpecError::ForwardWithoutNetwork),
        Some(name) if skiff_net::check_network_name(name).is_ok() => {
            vec![nic(NetMode::Bridge, Some(name))]
        }
        Some(name) => return Err(RunSpecError::UnknownNetwork(name.to_owned())),
    };
    for (i, s) in body.shares.iter().enumerate() {
        if !s.source.is_absolute() || !s.target.starts_with('/') {
            return Err(RunSpecError::RelativeShare {
                path: s.source.clone(),
                target: s.target.clone(),
            });
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
            return Err(RunSpecError::RelativeRootfs(r.source.clone()));
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
    use skiff_spec::Accel;

    fn body() -> RunBody {
        RunBody {
            tty: None,
            argv: vec!["true".into()],
            cpus: 2,
            memory_mib: 512,
            env: Vec::new(),
            workdir: None,
            user: None,
            accel: Accel::Tcg,
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
        let cases: [(RunBody, &str); 6] = [
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
            let err = run_spec("run-x", &b).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }
}
