//! Unit tests of the launch plan: QEMU command lines as data.
use super::*;

pub(crate) fn cfg() -> VmConfig {
    VmConfig {
        cpus: 2,
        memory_mib: 512,
        kernel: "/k/vmlinuz".into(),
        initrd: "/c/initrd.cpio".into(),
        accel: Accel::Tcg,
        extra_cmdline: vec![],
        run_dir: "/run/skiff/vm1".into(),
        qemu_binary: "qemu-system-x86_64".into(),
        vsock_binary: "vhost-device-vsock".into(),
        transport: Transport::Vsock,
        console_log: "/run/skiff/vm1/console.log".into(),
        net: None,
        tap: None,
        vm_id: "vm1".into(),
        drives: Vec::new(),
        shares: Vec::new(),
        virtiofsd_binary: "virtiofsd".into(),
        rootfs: None,
        run_as: None,
        privileged: false,
        root_disk: None,
        init: GuestInit::Agent,
    }
}

fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn qemu_gets_microvm_with_acpi_shared_memory_and_vhost_user_vsock() {
    let p = plan(&cfg()).expect("plan");
    let a = &p.qemu.args;
    assert!(value_after(a, "-machine")[0].starts_with("microvm,acpi=on"));
    assert_eq!(value_after(a, "-smp"), ["2"]);
    assert_eq!(value_after(a, "-m"), ["512M"]);
    assert_eq!(
        value_after(a, "-object"),
        ["memory-backend-memfd,id=mem,size=512M,share=on"]
    );
    assert_eq!(value_after(a, "-numa"), ["node,memdev=mem"]);
    assert_eq!(
        value_after(a, "-chardev"),
        [
            "file,id=console,path=/run/skiff/vm1/console.log,append=on",
            "socket,id=vsock0,path=/run/skiff/vm1/vhost-vsock.sock"
        ]
    );
    assert_eq!(
        value_after(a, "-device"),
        [
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "vhost-user-vsock-device,chardev=vsock0"
        ]
    );
    assert_eq!(value_after(a, "-kernel"), ["/k/vmlinuz"]);
    assert_eq!(value_after(a, "-initrd"), ["/c/initrd.cpio"]);
    assert_eq!(value_after(a, "-serial"), ["chardev:console"]);
    assert!(a.contains(&"-nodefaults".to_owned()));
}

#[test]
fn a_pausable_vm_talks_over_a_serial_port_with_plain_memory_and_a_monitor() {
    let c = VmConfig {
        transport: Transport::Serial {
            bridge: "/usr/bin/skiff".into(),
        },
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    let a = &p.qemu.args;
    // Plain guest RAM: no memfd, which only vhost-user devices need.
    assert!(value_after(a, "-object").is_empty());
    assert!(value_after(a, "-numa").is_empty());
    assert_eq!(
        value_after(a, "-chardev")[1],
        "socket,id=agent,path=/run/skiff/vm1/serial.sock"
    );
    assert_eq!(
        value_after(a, "-device"),
        [
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "virtio-serial-device,max_ports=2",
            "virtserialport,chardev=agent,name=skiff.agent"
        ]
    );
    assert_eq!(
        value_after(a, "-qmp"),
        ["unix:/run/skiff/vm1/monitor.sock,server=on,wait=off"]
    );
    assert_eq!(p.qmp_socket, Some("/run/skiff/vm1/monitor.sock".into()));
    // The bridge stands where the vsock backend stands, with its sockets.
    assert_eq!(p.vsock_backend.program, PathBuf::from("/usr/bin/skiff"));
    assert_eq!(
        p.vsock_backend.args,
        [
            "serial-bridge",
            "--listen",
            "/run/skiff/vm1/serial.sock",
            "--uds-path",
            "/run/skiff/vm1/vsock.sock"
        ]
    );
    assert_eq!(p.vhost_socket, PathBuf::from("/run/skiff/vm1/serial.sock"));
    let line = kernel_cmdline(&c);
    assert!(
        line.contains("skiff.load=serial skiff.transport=serial init_on_free=1"),
        "{line}"
    );
    assert!(!kernel_cmdline(&cfg()).contains("skiff.transport"));
    assert!(!kernel_cmdline(&cfg()).contains("init_on_free"));

    // virtiofs cannot be saved: a pausable VM has no shares.
    let shared = VmConfig {
        rootfs: Some(RootFs {
            source: "/srv/root".into(),
            writable: false,
            owner: None,
        }),
        ..c
    };
    assert_eq!(plan(&shared), Err(PlanError::PausableWithShares));
}

#[test]
fn tcg_gets_the_tsc_workaround_and_kvm_does_not() {
    let tcg = kernel_cmdline(&cfg());
    assert!(tcg.contains("tsc_early_khz=2000000"), "{tcg}");
    assert!(tcg.starts_with("console=ttyS0"));
    let kvm_cfg = VmConfig {
        accel: Accel::Kvm,
        ..cfg()
    };
    assert!(!kernel_cmdline(&kvm_cfg).contains("tsc_early_khz"));
    let p = plan(&kvm_cfg).expect("plan");
    assert_eq!(value_after(&p.qemu.args, "-accel"), ["kvm"]);
    assert_eq!(value_after(&p.qemu.args, "-cpu"), ["host"]);
}

#[test]
fn the_console_is_appended_to_its_log_file() {
    let c = VmConfig {
        console_log: "/var/lib/skiff/vms/web/console.log".into(),
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    assert_eq!(p.console_log, c.console_log);
    assert_eq!(value_after(&p.qemu.args, "-serial"), ["chardev:console"]);
    assert_eq!(
        value_after(&p.qemu.args, "-chardev")[0],
        "file,id=console,path=/var/lib/skiff/vms/web/console.log,append=on"
    );
}

#[test]
fn user_networking_adds_a_nic_and_the_guest_address() {
    let c = VmConfig {
        net: Some(crate::usernet::UserNet::default()),
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    assert_eq!(value_after(&p.qemu.args, "-netdev"), ["user,id=net0"]);
    assert!(value_after(&p.qemu.args, "-device")
        .iter()
        .any(|d| d.starts_with("virtio-net-device,netdev=net0,mac=52:54:")));
    let line = kernel_cmdline(&c);
    assert!(
        line.contains("skiff.load=net skiff.ip=10.0.2.15/24 skiff.gw=10.0.2.2 skiff.dns=10.0.2.3"),
        "{line}"
    );
    // No network: no NIC, no address.
    let none = plan(&cfg()).expect("plan");
    assert!(value_after(&none.qemu.args, "-netdev").is_empty());
    assert!(!kernel_cmdline(&cfg()).contains("skiff.ip"));
}

#[test]
fn drives_become_virtio_blk_devices_mounted_by_label() {
    let mount = skiff_proto::guest::MountArg {
        label: "skiff-config".into(),
        target: "/run/skiff/config".into(),
        readonly: true,
        noexec: true,
        nosuid: true,
        nodev: true,
    };
    let c = VmConfig {
        drives: vec![Drive {
            path: "/run/x,y/config.ext4".into(),
            mount,
        }],
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    assert_eq!(
        value_after(&p.qemu.args, "-drive"),
        ["file=/run/x,,y/config.ext4,if=none,id=drive0,format=raw,readonly=on"]
    );
    assert!(value_after(&p.qemu.args, "-device").contains(&"virtio-blk-device,drive=drive0"));
    let line = kernel_cmdline(&c);
    assert!(
        line.contains(
            "skiff.load=blk skiff.mount=skiff-config@/run/skiff/config@ro.noexec.nosuid.nodev"
        ),
        "{line}"
    );
}

#[test]
fn shares_get_a_virtiofsd_each_and_a_vhost_user_fs_device() {
    let mount = skiff_proto::guest::MountArg {
        label: "src".into(),
        target: "/work".into(),
        readonly: true,
        noexec: false,
        nosuid: false,
        nodev: true,
    };
    let c = VmConfig {
        shares: vec![ShareDir {
            source: "/home/me/src".into(),
            mount,
            owner: None,
        }],
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    let (fsd, socket) = &p.virtiofsd[0];
    assert_eq!(socket, &PathBuf::from("/run/skiff/vm1/fs0.sock"));
    assert_eq!(
        fsd.args,
        [
            "--socket-path",
            "/run/skiff/vm1/fs0.sock",
            "--shared-dir",
            "/home/me/src",
            "--sandbox",
            "none",
            "--readonly"
        ]
    );
    assert!(value_after(&p.qemu.args, "-chardev")
        .contains(&"socket,id=fs0,path=/run/skiff/vm1/fs0.sock"));
    assert!(
        value_after(&p.qemu.args, "-device").contains(&"vhost-user-fs-device,chardev=fs0,tag=src")
    );
    assert!(kernel_cmdline(&c).contains("skiff.load=fs skiff.share=src@/work@ro.nodev"));
    assert_eq!((fsd.run_as, fsd.no_set_id_files), (None, false));
}

#[test]
fn a_writable_share_of_a_root_daemon_runs_as_its_owner_with_every_guest_id_squashed() {
    let owner = Owner {
        uid: 1000,
        gid: 1001,
    };
    let share = |readonly, owner| ShareDir {
        source: "/home/me/out".into(),
        mount: skiff_proto::guest::MountArg {
            label: "out".into(),
            target: "/out".into(),
            readonly,
            noexec: false,
            nosuid: false,
            nodev: true,
        },
        owner,
    };
    let c = VmConfig {
        privileged: true,
        shares: vec![share(false, Some(owner)), share(true, None)],
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    let (rw, socket) = &p.virtiofsd[0];
    assert_eq!(
        rw.args,
        [
            "--fd=3",
            "--shared-dir",
            "/home/me/out",
            "--sandbox",
            "namespace",
            "--uid-map=:0:1000:1:",
            "--gid-map=:0:1001:1:",
            "--translate-uid=squash-guest:0:0:4294967295",
            "--translate-gid=squash-guest:0:0:4294967295",
            "--modcaps=-mknod:-setfcap",
            "--inode-file-handles=never",
        ]
    );
    assert_eq!(rw.run_as, Some(owner));
    assert_eq!(
        rw.listener_fd3.as_ref(),
        Some(socket),
        "skiff binds the socket QEMU uses"
    );
    assert!(rw.no_set_id_files);
    // A read-only share of a root daemon: sandboxed, no ids to map.
    let (ro, _) = &p.virtiofsd[1];
    assert_eq!(&ro.args[4..], ["--sandbox", "namespace", "--readonly"]);
    assert_eq!(
        (ro.run_as, ro.listener_fd3.as_ref(), ro.no_set_id_files),
        (None, None, false)
    );
    // An ordinary user's daemon: its virtiofsd is that user, and still no
    // set-id bits through a writable share.
    let user = VmConfig {
        shares: vec![share(false, None)],
        ..cfg()
    };
    let (mine, _) = &plan(&user).expect("plan").virtiofsd[0];
    assert!(mine
        .args
        .ends_with(&["--sandbox".to_owned(), "none".to_owned()]));
    assert!(mine.no_set_id_files);
}

#[test]
fn a_rootfs_is_the_first_share_and_named_on_the_command_line() {
    let c = VmConfig {
        rootfs: Some(RootFs {
            source: "/srv/root".into(),
            writable: false,
            owner: None,
        }),
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    assert!(p.virtiofsd[0].0.args.contains(&"/srv/root".to_owned()));
    assert!(p.virtiofsd[0].0.args.contains(&"--readonly".to_owned()));
    assert!(value_after(&p.qemu.args, "-device")
        .contains(&"vhost-user-fs-device,chardev=fs0,tag=rootfs"));
    assert!(kernel_cmdline(&c).contains("skiff.load=rootfs skiff.rootfs=rootfs@overlay"));
    let rw = VmConfig {
        rootfs: Some(RootFs {
            source: "/srv/root".into(),
            writable: true,
            owner: None,
        }),
        ..cfg()
    };
    assert!(kernel_cmdline(&rw).contains("skiff.rootfs=rootfs@rw"));
    assert!(!plan(&rw).expect("plan").virtiofsd[0]
        .0
        .args
        .contains(&"--readonly".to_owned()));
}

#[test]
fn extra_kernel_args_come_last() {
    let c = VmConfig {
        extra_cmdline: vec!["foo=bar".into()],
        ..cfg()
    };
    assert!(kernel_cmdline(&c).ends_with(" foo=bar"));
}

#[test]
fn vsock_backend_serves_the_socket_qemu_uses() {
    let p = plan(&cfg()).expect("plan");
    assert_eq!(
        p.vsock_backend.args,
        [
            "--guest-cid",
            "3",
            "--socket",
            "/run/skiff/vm1/vhost-vsock.sock",
            "--uds-path",
            "/run/skiff/vm1/vsock.sock"
        ]
    );
    assert_eq!(
        p.ready_socket,
        PathBuf::from("/run/skiff/vm1/vsock.sock_1025")
    );
}

#[test]
fn out_of_range_sizes_are_rejected_with_the_allowed_range() {
    let e = plan(&VmConfig {
        memory_mib: 0,
        ..cfg()
    })
    .unwrap_err();
    assert!(e.to_string().contains("64 to"), "{e}");
    let e = plan(&VmConfig { cpus: 0, ..cfg() }).unwrap_err();
    assert!(e.to_string().contains("cpus"), "{e}");
    let e = plan(&VmConfig {
        extra_cmdline: vec!["a\"b".into()],
        ..cfg()
    })
    .unwrap_err();
    assert!(matches!(e, PlanError::BadKernelArg { .. }));
    // A mount target with a space would add a kernel argument of its own.
    let mount = skiff_proto::guest::MountArg {
        label: "vol".into(),
        target: "/data skiff.rootfs=evil@rw".into(),
        readonly: false,
        noexec: false,
        nosuid: false,
        nodev: false,
    };
    let e = plan(&VmConfig {
        drives: vec![Drive {
            path: "/x.ext4".into(),
            mount,
        }],
        ..cfg()
    })
    .unwrap_err();
    assert!(
        matches!(&e, PlanError::BadKernelArg { arg } if arg.contains("/data skiff.rootfs")),
        "{e}"
    );
}

#[test]
fn a_managed_network_nic_is_a_tap_with_the_address_on_the_command_line() {
    let c = VmConfig {
        tap: Some(crate::TapNic {
            ifname: "skt-abc".into(),
            address: "10.88.0.2/24".into(),
            gateway: "10.88.0.1".into(),
            dns: None,
        }),
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    assert_eq!(
        value_after(&p.qemu.args, "-netdev"),
        ["tap,id=net0,ifname=skt-abc,script=no,downscript=no"]
    );
    let line = kernel_cmdline(&c);
    assert!(
        line.contains("skiff.load=net skiff.ip=10.88.0.2/24 skiff.gw=10.88.0.1"),
        "{line}"
    );
    assert!(!line.contains("skiff.dns"), "{line}");
    let both = VmConfig {
        net: Some(crate::UserNet::default()),
        ..c
    };
    assert!(matches!(plan(&both), Err(PlanError::TwoNics)));
}

#[test]
fn qemu_runs_under_seccomp_and_drops_root_when_asked() {
    let p = plan(&cfg()).expect("plan");
    assert_eq!(value_after(&p.qemu.args, "-sandbox"), [QEMU_SECCOMP]);
    assert!(QEMU_SECCOMP.contains("elevateprivileges=deny,spawn=deny"));
    assert!(value_after(&p.qemu.args, "-runas").is_empty());
    let c = VmConfig {
        run_as: Some("nobody".into()),
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    assert_eq!(value_after(&p.qemu.args, "-runas"), ["nobody"]);
    assert_eq!(value_after(&p.qemu.args, "-sandbox"), [QEMU_SECCOMP_RUNAS]);
    assert!(QEMU_SECCOMP_RUNAS.contains("spawn=deny"));
}

#[test]
fn a_root_disk_is_the_first_block_device_found_by_its_serial() {
    let c = VmConfig {
        root_disk: Some(RootDisk {
            path: "/var/lib/skiff/vms/dev/root.qcow2".into(),
            format: DiskFormat::Qcow2,
        }),
        init: GuestInit::System {
            target: "multi-user.target".into(),
        },
        drives: vec![Drive {
            path: "/v/data.ext4".into(),
            mount: skiff_proto::guest::MountArg {
                label: "skiff-data".into(),
                target: "/data".into(),
                readonly: false,
                noexec: false,
                nosuid: false,
                nodev: true,
            },
        }],
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    let drives = value_after(&p.qemu.args, "-drive");
    assert_eq!(
        drives[0],
        "file=/var/lib/skiff/vms/dev/root.qcow2,if=none,id=root,format=qcow2,readonly=off"
    );
    assert!(drives[1].starts_with("file=/v/data.ext4,"), "{drives:?}");
    assert_eq!(
        value_after(&p.qemu.args, "-device")
            .into_iter()
            .find(|d| d.starts_with("virtio-blk-device"))
            .expect("a block device"),
        "virtio-blk-device,drive=root,serial=skiff-root"
    );
    let cmdline = kernel_cmdline(&c);
    let words: Vec<&str> = cmdline.split(' ').collect();
    assert_eq!(
        words.iter().filter(|w| **w == "skiff.load=blk").count(),
        1,
        "{cmdline}"
    );
    for want in [
        "skiff.root=skiff-root",
        "skiff.init=system",
        "skiff.target=multi-user.target",
    ] {
        assert!(words.contains(&want), "{want} missing: {cmdline}");
    }
}

#[test]
fn roots_and_inits_that_cannot_go_together_are_refused() {
    let disk = RootDisk {
        path: "/r.qcow2".into(),
        format: DiskFormat::Qcow2,
    };
    let both = VmConfig {
        root_disk: Some(disk),
        rootfs: Some(RootFs {
            source: "/dir".into(),
            writable: false,
            owner: None,
        }),
        ..cfg()
    };
    assert_eq!(plan(&both), Err(PlanError::TwoRoots));
    let no_root = VmConfig {
        init: GuestInit::System {
            target: "multi-user.target".into(),
        },
        ..cfg()
    };
    assert_eq!(plan(&no_root), Err(PlanError::InitWithoutRoot));
    assert!(!kernel_cmdline(&cfg()).contains("skiff.root"));
    assert!(!kernel_cmdline(&cfg()).contains("skiff.init"));
}

#[test]
fn tcg_gets_a_bounded_translation_cache_that_fits_the_cgroup_overhead() {
    let p = plan(&cfg()).expect("plan");
    assert_eq!(value_after(&p.qemu.args, "-accel"), ["tcg,tb-size=128"]);
    let kvm = plan(&VmConfig {
        accel: Accel::Kvm,
        ..cfg()
    })
    .expect("plan");
    assert_eq!(value_after(&kvm.qemu.args, "-accel"), ["kvm"]);
}

#[test]
fn a_guest_with_its_own_initrd_gets_its_files_a_monitor_and_no_skiff_arguments() {
    let c = VmConfig {
        kernel: "/img/vmlinuz".into(),
        initrd: "/img/initrd.img".into(),
        init: GuestInit::Own,
        root_disk: Some(RootDisk {
            path: "/v/root.qcow2".into(),
            format: DiskFormat::Qcow2,
        }),
        net: Some(crate::usernet::UserNet {
            forwards: Vec::new(),
            no_egress: false,
        }),
        extra_cmdline: vec!["loglevel=4".into()],
        ..cfg()
    };
    let p = plan(&c).expect("plan");
    assert_eq!(value_after(&p.qemu.args, "-kernel"), ["/img/vmlinuz"]);
    assert_eq!(value_after(&p.qemu.args, "-initrd"), ["/img/initrd.img"]);
    let qmp = p.qmp_socket.clone().expect("a monitor socket");
    assert_eq!(qmp, c.run_dir.join("qmp.sock"));
    assert_eq!(
        value_after(&p.qemu.args, "-qmp"),
        [format!("unix:{},server=on,wait=off", qmp.display())]
    );
    let cmdline = kernel_cmdline(&c);
    assert!(!cmdline.contains("skiff."), "{cmdline}");
    assert!(
        cmdline.ends_with(" root=/dev/vda rw loglevel=4"),
        "the disk is the root unless the spec says otherwise: {cmdline}"
    );
    let own_root = VmConfig {
        extra_cmdline: vec!["root=LABEL=nixos".into(), "ro".into()],
        ..c.clone()
    };
    let cmdline = kernel_cmdline(&own_root);
    assert!(!cmdline.contains("/dev/vda"), "{cmdline}");
    assert!(cmdline.ends_with(" root=LABEL=nixos ro"), "{cmdline}");
    let bridged = VmConfig {
        net: None,
        tap: Some(crate::TapNic {
            ifname: "sk-t2".into(),
            address: "10.88.0.9/24".into(),
            gateway: "10.88.0.1".into(),
            dns: None,
        }),
        ..c.clone()
    };
    let cmdline = kernel_cmdline(&bridged);
    assert!(
        cmdline.contains(" ip=10.88.0.9::10.88.0.1:255.255.255.0:::off ")
            && !cmdline.contains("skiff."),
        "{cmdline}"
    );
    // An agent VM has no monitor socket, and a shared-directory root needs
    // the agent.
    assert_eq!(plan(&cfg()).expect("plan").qmp_socket, None);
    let shared_root = VmConfig {
        root_disk: None,
        rootfs: Some(RootFs {
            source: "/dir".into(),
            writable: false,
            owner: None,
        }),
        ..c
    };
    assert_eq!(plan(&shared_root), Err(PlanError::OwnInitrdWithSharedRoot));
}

#[test]
fn an_mvm_guest_gets_mvm_s_kernel_arguments_and_its_address() {
    let tap = crate::TapNic {
        ifname: "sk-t1".into(),
        address: "10.88.0.5/24".into(),
        gateway: "10.88.0.1".into(),
        dns: None,
    };
    let c = VmConfig {
        init: GuestInit::Mvm,
        root_disk: Some(RootDisk {
            path: "/v/root.qcow2".into(),
            format: DiskFormat::Qcow2,
        }),
        tap: Some(tap),
        ..cfg()
    };
    let cmdline = kernel_cmdline(&c);
    let words: Vec<&str> = cmdline.split(' ').collect();
    for want in [
        "console=ttyS0",
        "reboot=k",
        "panic=1",
        "net.ifnames=0",
        "8250.nr_uarts=1",
        "mvm.ip=10.88.0.5/24",
        "mvm.gw=10.88.0.1",
        "root=/dev/vda",
        "rw",
    ] {
        assert!(words.contains(&want), "{want} missing: {cmdline}");
    }
    assert!(
        !cmdline.contains("skiff.") && !cmdline.contains("panic=-1"),
        "{cmdline}"
    );
    assert!(plan(&c).expect("plan").qmp_socket.is_some());
    // In user mode the address is the one QEMU's network hands out.
    let user = VmConfig {
        tap: None,
        net: Some(crate::usernet::UserNet {
            forwards: Vec::new(),
            no_egress: false,
        }),
        ..c
    };
    let cmdline = kernel_cmdline(&user);
    assert!(
        cmdline.contains("mvm.ip=10.0.2.15/24 mvm.gw=10.0.2.2"),
        "{cmdline}"
    );
}
