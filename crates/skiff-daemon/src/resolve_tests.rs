//! The plan of a VM, field by field, without booting it.
use super::*;
use skiff_vmm::backend::Qemu;

fn host() -> Host {
    Host {
        kernel: "/cache/vmlinuz".into(),
        initrd: "/cache/initrd.cpio".into(),
        accel: Accel::Tcg,
        run_dir: "/run/skiff/vms/abc".into(),
        console_log: "/var/lib/skiff/vms/web/console.log".into(),
        qemu_binary: "qemu-system-x86_64".into(),
        vsock_binary: "vhost-device-vsock".into(),
        bridge_binary: "/usr/bin/skiff".into(),
        virtiofsd_binary: "virtiofsd".into(),
        run_as: Some("nobody".into()),
        privileged: true,
    }
}

fn spec(toml: &str) -> VmSpec {
    skiff_spec::parse_file(toml)
        .expect("valid spec")
        .pop()
        .expect("one VM")
}

fn arg_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn a_default_vm_gets_its_size_limits_console_and_user() {
    let p = resolve(
        &spec("[vm.web]\nvcpus = 2\nmemory = \"512M\"\n"),
        "abc",
        &host(),
        Artifacts::default(),
        &Qemu,
    )
    .expect("plan");
    assert_eq!(p.config.cpus, 2);
    assert_eq!(p.config.memory_mib, 512);
    assert_eq!(p.config.vm_id, "abc");
    assert_eq!(p.config.net, None);
    assert_eq!(p.config.tap, None);
    assert_eq!(p.config.rootfs, None);
    assert_eq!(p.limits.memory_bytes, (512 + 256) * 1024 * 1024);
    assert_eq!(p.limits.cpu_quota_us, 3 * p.limits.cpu_period_us);
    let args = &p.launch.qemu.args;
    assert_eq!(arg_after(args, "-runas"), ["nobody"]);
    assert_eq!(arg_after(args, "-smp"), ["2"]);
    assert_eq!(arg_after(args, "-kernel"), ["/cache/vmlinuz"]);
    assert_eq!(p.launch.console_log, host().console_log);
    assert!(p.launch.run_dir.starts_with("/run/skiff/vms/abc"));
    assert!(arg_after(args, "-append")[0].contains("tsc_early_khz="));
    assert!(!args.iter().any(|a| a.starts_with("-netdev")));
}

#[test]
fn user_networking_with_forwards_and_no_egress() {
    let p = resolve(
        &spec("[vm.web]\nnetwork = [{ mode = \"user\", egress = \"none\" }]\nforward_ports = [\"8080:80\"]\n"),
        "abc",
        &host(),
        Artifacts::default(),
        &Qemu,
    )
    .expect("plan");
    let net = p.config.net.expect("user net");
    assert!(net.no_egress);
    assert_eq!(net.forwards.len(), 1);
    let netdev = arg_after(&p.launch.qemu.args, "-netdev")[0];
    assert!(netdev.contains("restrict=on"), "{netdev}");
    assert!(
        netdev.contains("hostfwd=tcp:127.0.0.1:8080-:80"),
        "{netdev}"
    );
}

#[test]
fn shares_image_root_drives_and_tap_come_from_the_artifacts() {
    let s = spec(
        "[vm.web]\nimage = \"python\"\nshares = [{ source = \"/srv/www\", target = \"/www\", readonly = true }]\nnetwork = [{ mode = \"bridge\", network = \"lan\" }]\n",
    );
    let tap = TapNic {
        ifname: "skt-abc".into(),
        address: "10.88.0.2/24".into(),
        gateway: "10.88.0.1".into(),
        dns: None,
    };
    let drive = Drive {
        path: "/var/lib/skiff/vms/web/config.ext4".into(),
        mount: skiff_proto::guest::MountArg {
            label: "skiff-config".into(),
            target: "/run/skiff/config".into(),
            readonly: true,
            noexec: true,
            nosuid: true,
            nodev: true,
        },
    };
    let artifacts = Artifacts {
        drives: vec![drive.clone()],
        tap: Some(tap.clone()),
        image_root: Some("/cache/images/py/root".into()),
        root_disk: None,
        share_owners: Default::default(),
    };
    let p = resolve(&s, "abc", &host(), artifacts, &Qemu).expect("plan");
    assert_eq!(p.config.tap, Some(tap));
    assert_eq!(p.config.drives, [drive]);
    assert_eq!(
        p.config.rootfs,
        Some(skiff_vmm::RootFs {
            source: "/cache/images/py/root".into(),
            writable: false,
            owner: None,
        })
    );
    // The root first, then the share: one virtiofsd each, the share read-only.
    assert_eq!(p.launch.virtiofsd.len(), 2);
    assert!(p.launch.virtiofsd[1]
        .0
        .args
        .contains(&"--readonly".to_owned()));
    let cmdline = arg_after(&p.launch.qemu.args, "-append")[0];
    assert!(cmdline.contains("skiff.ip=10.88.0.2/24"), "{cmdline}");
    assert!(cmdline.contains("skiff.rootfs=rootfs@overlay"), "{cmdline}");

    // Without the artifacts the plan says what is missing.
    let err = resolve(&s, "abc", &host(), Artifacts::default(), &Qemu).expect_err("no image");
    assert!(
        err.to_string()
            .contains("image \"python\" is not in the image cache"),
        "{err}"
    );
}

#[test]
fn unsupported_features_and_bad_kernel_arguments_are_refused_by_name() {
    let two = spec(
        "[vm.a]\nnetwork = [{ mode = \"bridge\", network = \"lan\" }, { mode = \"user\", egress = [\"10.0.0.0/8\"] }]\n",
    );
    let err = resolve(&two, "id", &host(), Artifacts::default(), &Qemu)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("more than one network interface, egress limited to CIDRs in user mode"),
        "{err}"
    );
    let mut quoted = VmSpec::with_defaults("b");
    quoted.kernel = Some(skiff_spec::KernelSpec {
        path: None,
        modules: None,
        initrd: None,
        params: vec!["a=\"b\"".into()],
    });
    let err = resolve(&quoted, "id", &host(), Artifacts::default(), &Qemu).expect_err("refused");
    assert!(matches!(err, ResolveError::Plan { .. }), "{err:?}");
}

#[test]
fn a_run_request_is_planned_like_a_spec() {
    let body = crate::run_spec::RunBody {
        tty: None,
        argv: vec!["true".into()],
        cpus: 1,
        memory_mib: 256,
        env: Vec::new(),
        workdir: None,
        user: None,
        accel: skiff_spec::Accel::Auto,
        kernel: None,
        modules: None,
        boot_timeout_secs: 120,
        quiet: true,
        stdin: false,
        net: Some("user".into()),
        publish: vec!["127.0.0.1:9000:90/udp".into()],
        shares: Vec::new(),
        rootfs: None,
    };
    let s = crate::run_spec::run_spec("run-abc", &body).expect("spec");
    let p = resolve(&s, "abc", &host(), Artifacts::default(), &Qemu).expect("plan");
    let netdev = arg_after(&p.launch.qemu.args, "-netdev")[0];
    assert!(
        netdev.contains("hostfwd=udp:127.0.0.1:9000-:90"),
        "{netdev}"
    );
    assert_eq!(arg_after(&p.launch.qemu.args, "-runas"), ["nobody"]);
}

#[test]
fn a_full_os_vm_boots_its_root_disk_with_its_own_init() {
    let mut s = spec("[vm.dev]\n");
    s.disk = Some(skiff_spec::DiskSpec {
        source: skiff_spec::DiskSource::Image("devbox".into()),
        persistent: true,
    });
    s.init = skiff_spec::InitSpec::System {
        target: "multi-user.target".into(),
    };
    let err = resolve(&s, "abc", &host(), Artifacts::default(), &Qemu).expect_err("no disk");
    assert!(
        err.to_string().contains("root disk was not prepared"),
        "{err}"
    );
    let disk = skiff_vmm::RootDisk {
        path: "/state/vms/dev/root.qcow2".into(),
        format: skiff_vmm::DiskFormat::Qcow2,
    };
    let artifacts = Artifacts {
        root_disk: Some(disk.clone()),
        ..Artifacts::default()
    };
    let p = resolve(&s, "abc", &host(), artifacts, &Qemu).expect("plan");
    assert_eq!(p.config.root_disk, Some(disk));
    assert_eq!(p.config.rootfs, None);
    assert_eq!(
        p.config.init,
        skiff_vmm::GuestInit::System {
            target: "multi-user.target".into()
        }
    );
    let append = p
        .launch
        .qemu
        .args
        .windows(2)
        .find(|w| w[0] == "-append")
        .map(|w| w[1].clone())
        .expect("-append");
    assert!(
        append.contains("skiff.root=skiff-root skiff.init=system skiff.target=multi-user.target"),
        "{append}"
    );
}

#[test]
fn a_guest_with_its_own_initrd_boots_its_files_and_is_probed_where_it_answers() {
    let own = "kernel = { path = \"/img/vmlinuz\", initrd = \"/img/initrd.img\" }\n";
    let user = spec(&format!(
        "[vm.old]\n{own}network = [{{ mode = \"user\" }}]\nforward_ports = [\"2223:7777\", \"0.0.0.0:2224:22\"]\nready = {{ tcp = 7777 }}\n"
    ));
    let p = resolve(&user, "abc", &host(), Artifacts::default(), &Qemu).expect("plan");
    assert_eq!(p.config.init, skiff_vmm::GuestInit::Own);
    assert_eq!(arg_after(&p.launch.qemu.args, "-kernel"), ["/img/vmlinuz"]);
    assert_eq!(
        arg_after(&p.launch.qemu.args, "-initrd"),
        ["/img/initrd.img"]
    );
    assert_eq!(
        p.ready,
        Some(ReadyProbe::Tcp {
            addr: "127.0.0.1:2223".parse().expect("addr"),
            direct: false
        })
    );
    // A forward on every address is probed on loopback.
    let mut ssh = user.clone();
    ssh.ready = Some(skiff_spec::ReadySpec::Tcp(22));
    assert_eq!(
        ready_probe(&ssh, None),
        Some(ReadyProbe::Tcp {
            addr: "127.0.0.1:2224".parse().expect("addr"),
            direct: false
        })
    );
    // On a managed network: the guest's own address.
    let bridged = spec(&format!(
        "[vm.old]\n{own}network = [{{ mode = \"bridge\", network = \"lan\" }}]\nready = {{ tcp = 22 }}\n"
    ));
    let tap = TapNic {
        ifname: "sk-t0".into(),
        address: "10.88.0.7/24".into(),
        gateway: "10.88.0.1".into(),
        dns: None,
    };
    assert_eq!(
        ready_probe(&bridged, Some(&tap)),
        Some(ReadyProbe::Tcp {
            addr: "10.88.0.7:22".parse().expect("addr"),
            direct: true
        })
    );
    let console = spec(&format!(
        "[vm.old]\n{own}ready = {{ console = \"login:\" }}\n"
    ));
    assert_eq!(
        ready_probe(&console, None),
        Some(ReadyProbe::Console("login:".into()))
    );
    // An agent VM keeps skiff's kernel and initramfs and has no probe.
    let agent = resolve(
        &spec("[vm.a]\n"),
        "abc",
        &host(),
        Artifacts::default(),
        &Qemu,
    )
    .expect("plan");
    assert_eq!(
        arg_after(&agent.launch.qemu.args, "-initrd"),
        ["/cache/initrd.cpio"]
    );
    assert_eq!(agent.ready, None);
}
