//! A VM as plain data: what to run and with which arguments. Building the
//! plan does no I/O, so every command line is checked by unit tests.

use crate::accel::Accel;
use std::path::{Path, PathBuf};

/// The guest CID given to every VM. Each VM has its own vsock backend
/// process, so CIDs never meet and one fixed value is enough.
pub const GUEST_CID: u32 = 3;

/// I/O port of the `isa-debug-exit` device the agent writes its service's
/// outcome to.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// How QEMU's exit status tells a VM's end apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off (or was asked to).
    PowerOff,
    /// The service exited successfully.
    ServiceSucceeded,
    /// The service failed.
    ServiceFailed,
    /// Anything else: QEMU crashed or was killed.
    Crashed,
}

/// Interpret QEMU's exit code (None: killed by a signal).
pub fn guest_exit(code: Option<i32>) -> GuestExit {
    match code {
        Some(0) => GuestExit::PowerOff,
        Some(1) => GuestExit::ServiceSucceeded,
        Some(3) => GuestExit::ServiceFailed,
        _ => GuestExit::Crashed,
    }
}

/// Under TCG the kernel's early TSC calibration hangs on about half of all
/// boots; telling it the frequency avoids that (see docs/FACTS.md).
const TCG_TSC_KHZ: &str = "tsc_early_khz=2000000";

/// TCG with a bounded translation cache. QEMU's default (1 GiB on 64-bit
/// hosts) grows with the code a guest runs: a systemd guest with sshd took
/// QEMU past guest memory + 256 MiB and its cgroup killed it (docs/FACTS.md).
pub const TCG_ACCEL: &str = "tcg,tb-size=128";
// The cache must fit in the overhead the VM's cgroup allows over guest memory.
const _: () = assert!(128 < crate::cgroup::OVERHEAD_MIB);

/// What the caller wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub cpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub accel: Accel,
    /// Extra kernel command-line arguments, appended last.
    pub extra_cmdline: Vec<String>,
    /// Directory for this VM's sockets; created at launch, removed at teardown.
    pub run_dir: PathBuf,
    /// Programs to run (names are looked up in PATH).
    pub qemu_binary: PathBuf,
    pub vsock_binary: PathBuf,
    /// How the host reaches the agent.
    pub transport: Transport,
    /// Where the serial console goes: this file, appended to (so that it
    /// can be truncated while QEMU runs).
    pub console_log: PathBuf,
    /// User-mode networking; `None`: no network device at all.
    pub net: Option<crate::usernet::UserNet>,
    /// A NIC on a TAP of a managed network (not together with `net`).
    pub tap: Option<crate::tap::TapNic>,
    /// Stable per VM (the MAC address derives from it).
    pub vm_id: String,
    /// Block devices, each mounted by the agent by its ext4 label.
    pub drives: Vec<Drive>,
    /// Host directories shared with virtiofs, mounted by the agent by tag.
    pub shares: Vec<ShareDir>,
    /// The virtiofs daemon (`virtiofsd`).
    pub virtiofsd_binary: PathBuf,
    /// Boot into this host directory instead of the initramfs.
    pub rootfs: Option<RootFs>,
    /// Drop QEMU's privileges to this user once it has opened its devices
    /// (for a daemon that runs as root).
    pub run_as: Option<String>,
    /// The daemon runs as root: every virtiofsd runs in its namespace
    /// sandbox (whatever QEMU's user).
    pub privileged: bool,
    /// The root filesystem on a block device (not together with `rootfs`).
    pub root_disk: Option<RootDisk>,
    /// Who is PID 1 once the root is mounted.
    pub init: GuestInit,
}

/// A root filesystem on a virtio block device: the VM's own writable
/// layer, whose backing file (if any) is the shared read-only base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDisk {
    pub path: PathBuf,
    pub format: DiskFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// The QMP socket of a pausable VM, in its runtime directory.
pub const MONITOR_SOCKET: &str = "monitor.sock";

/// The channel between host and agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Transport {
    /// vsock through vhost-device-vsock: QEMU 7.2 cannot save such a VM.
    #[default]
    Vsock,
    /// A virtio-serial port, multiplexed by `bridge serial-bridge` (skiff's
    /// own binary), which offers the vsock backend's sockets; such a VM can
    /// be saved and restored.
    Serial { bridge: PathBuf },
}

/// The virtio serial number of the root disk, by which the agent finds it
/// (device order is not an interface).
pub const ROOT_DISK_SERIAL: &str = "skiff-root";

/// The guest's PID 1 after the initramfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GuestInit {
    /// skiff's agent stays PID 1.
    #[default]
    Agent,
    /// The guest's own init (`/sbin/init`); the agent runs as its service
    /// and reports ready when `target` is active.
    System { target: String },
    /// The guest's own initrd (`VmConfig::initrd` is the guest's) and init:
    /// no skiff agent, no `skiff.*` arguments; stopped through the ACPI
    /// power button (QMP `system_powerdown`).
    Own,
    /// [`GuestInit::Own`] under mvm's contract (seed 000): mvm's kernel
    /// arguments, `mvm.ip=`/`mvm.gw=` for its interface (the drives'
    /// order and labels are the caller's).
    Mvm,
}

impl GuestInit {
    /// Whether skiff's agent runs in the guest.
    pub fn has_agent(&self) -> bool {
        matches!(self, GuestInit::Agent | GuestInit::System { .. })
    }
}

/// QEMU's user-mode network as its guest sees it (slirp's defaults).
pub const USER_NET_GUEST: &str = "10.0.2.15/24";
pub const USER_NET_GATEWAY: &str = "10.0.2.2";

/// The `-sandbox` options QEMU runs with.
pub const QEMU_SECCOMP: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";
/// The same for a QEMU that drops root with `-runas` (which needs setuid).
pub const QEMU_SECCOMP_RUNAS: &str =
    "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";

/// A host directory as the guest's root filesystem, shared with virtiofs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFs {
    pub source: PathBuf,
    /// Writes go to the host directory; otherwise to an overlay in guest
    /// memory, and the directory stays untouched.
    pub writable: bool,
    /// For a writable root under a root daemon: who the guest writes as.
    pub owner: Option<Owner>,
}

/// The host user and group a writable share's virtiofsd runs as, and every
/// guest user's files belong to on the host (see [`ShareDir::owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The virtiofs tag of the root filesystem share.
pub const ROOTFS_TAG: &str = "rootfs";

impl VmConfig {
    /// Every virtiofs share, the root filesystem first.
    fn all_shares(&self) -> Vec<ShareDir> {
        let mut all = Vec::new();
        if let Some(root) = &self.rootfs {
            all.push(ShareDir {
                source: root.source.clone(),
                mount: skiff_proto::guest::MountArg {
                    label: ROOTFS_TAG.into(),
                    target: "/sysroot/base".into(),
                    readonly: !root.writable,
                    noexec: false,
                    nosuid: false,
                    nodev: false,
                },
                owner: root.owner,
            });
        }
        all.extend(self.shares.iter().cloned());
        all
    }
}

/// A host directory shared into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareDir {
    pub source: PathBuf,
    /// The tag and guest mount point (`label` is the virtiofs tag).
    pub mount: skiff_proto::guest::MountArg,
    /// Under a root daemon, a writable share's owner: its virtiofsd runs as
    /// this user in a user namespace where it is root, and every guest
    /// user maps to it, so the guest can neither make root-owned files nor
    /// device nodes on the host, nor touch files of other host users.
    pub owner: Option<Owner>,
}

/// A raw ext4 image given to the guest as a virtio block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub mount: skiff_proto::guest::MountArg,
}

/// One process to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessPlan {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Start it as this user (and no supplementary groups). The program is
    /// opened by skiff and run through its descriptor, so it may sit where
    /// that user cannot reach (root's ~/.cargo/bin).
    pub run_as: Option<Owner>,
    /// Bind a Unix socket here and hand it to the process, listening, as
    /// descriptor 3 (for a process that cannot create it itself).
    pub listener_fd3: Option<PathBuf>,
    /// Install [`crate::setid_filter`] before exec: the process can give no
    /// file a setuid or setgid bit.
    pub no_set_id_files: bool,
}

/// Everything needed to launch the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub run_dir: PathBuf,
    /// The socket QEMU connects to for the control channel: the vsock
    /// backend's vhost-user socket, or the serial bridge's.
    pub vhost_socket: PathBuf,
    /// Unix socket for host-initiated vsock connections (`CONNECT <port>`).
    pub vsock_socket: PathBuf,
    /// Unix socket the host listens on for the agent's ready connection.
    pub ready_socket: PathBuf,
    pub vsock_backend: ProcessPlan,
    /// One virtiofsd per share, with the socket QEMU connects to.
    pub virtiofsd: Vec<(ProcessPlan, PathBuf)>,
    pub qemu: ProcessPlan,
    /// The file the guest's serial console is appended to.
    pub console_log: PathBuf,
    /// QEMU's QMP socket, for a guest without an agent (to press its power
    /// button).
    pub qmp_socket: Option<PathBuf>,
}

/// Why a config cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{field}: {value} is out of range; allowed: {allowed}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        allowed: &'static str,
    },
    #[error("kernel argument {arg:?} is empty or contains a space, a control character or a quote; it cannot be passed safely")]
    BadKernelArg { arg: String },
    #[error("a VM has one network interface: user mode or a managed network, not both")]
    TwoNics,
    #[error("a VM has one root: a disk or a shared directory, not both")]
    TwoRoots,
    #[error("the guest's own init needs a root disk to boot from")]
    InitWithoutRoot,
    #[error("a guest with its own initrd boots from a disk: a shared-directory root is mounted by skiff's agent, which it does not have")]
    OwnInitrdWithSharedRoot,
    #[error("a pausable VM cannot have shared directories or a shared-directory root: QEMU cannot save virtiofs devices; use a disk or volumes instead")]
    PausableWithShares,
}

pub use skiff_spec::{MAX_MEMORY_MIB, MAX_VCPUS as MAX_CPUS, MIN_MEMORY_MIB};

/// Turn a config into the processes that run it.
pub fn plan(cfg: &VmConfig) -> Result<LaunchPlan, PlanError> {
    if cfg.net.is_some() && cfg.tap.is_some() {
        return Err(PlanError::TwoNics);
    }
    if cfg.root_disk.is_some() && cfg.rootfs.is_some() {
        return Err(PlanError::TwoRoots);
    }
    if cfg.root_disk.is_none() && matches!(cfg.init, GuestInit::System { .. }) {
        return Err(PlanError::InitWithoutRoot);
    }
    if cfg.rootfs.is_some() && !cfg.init.has_agent() {
        return Err(PlanError::OwnInitrdWithSharedRoot);
    }
    let serial = matches!(cfg.transport, Transport::Serial { .. });
    if serial && !cfg.all_shares().is_empty() {
        return Err(PlanError::PausableWithShares);
    }
    if cfg.cpus == 0 || cfg.cpus > MAX_CPUS {
        return Err(PlanError::OutOfRange {
            field: "cpus",
            value: cfg.cpus.into(),
            allowed: "1 to 255",
        });
    }
    if cfg.memory_mib < MIN_MEMORY_MIB || cfg.memory_mib > MAX_MEMORY_MIB {
        return Err(PlanError::OutOfRange {
            field: "memory (MiB)",
            value: cfg.memory_mib.into(),
            allowed: "64 to 1048576",
        });
    }
    // Every argument must stay one word on the command line: a space or a
    // quote in a mount target or a parameter would add arguments of its own.
    let mount_args = cfg
        .drives
        .iter()
        .map(|d| d.mount.to_arg())
        .chain(cfg.shares.iter().map(|s| s.mount.to_arg()));
    for arg in cfg.extra_cmdline.iter().cloned().chain(mount_args) {
        if arg.is_empty()
            || arg
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '"')
        {
            return Err(PlanError::BadKernelArg { arg });
        }
    }
    let run = &cfg.run_dir;
    let vhost_socket = match cfg.transport {
        Transport::Vsock => run.join("vhost-vsock.sock"),
        Transport::Serial { .. } => run.join("serial.sock"),
    };
    let vsock_socket = run.join("vsock.sock");
    let ready_socket = ready_socket_path(&vsock_socket, skiff_proto::READY_PORT);
    // QMP presses the power button of a guest without an agent (the daemon
    // knows such a boot by its socket), and saves a pausable VM.
    let qmp_socket = match (cfg.init.has_agent(), serial) {
        (false, _) => Some(run.join("qmp.sock")),
        (true, true) => Some(run.join(MONITOR_SOCKET)),
        (true, false) => None,
    };
    let virtiofsd = cfg
        .all_shares()
        .iter()
        .enumerate()
        .map(|(i, share)| virtiofsd_plan(cfg, run, i, share))
        .collect::<Vec<_>>();
    Ok(LaunchPlan {
        virtiofsd: virtiofsd.clone(),
        run_dir: run.clone(),
        vsock_backend: control_backend(cfg, &vhost_socket, &vsock_socket),
        qemu: ProcessPlan {
            program: cfg.qemu_binary.clone(),
            args: qemu_args(cfg, &vhost_socket, &virtiofsd, qmp_socket.as_deref()),
            ..ProcessPlan::default()
        },
        qmp_socket,
        vhost_socket,
        vsock_socket,
        ready_socket,
        console_log: cfg.console_log.clone(),
    })
}

/// The process behind the control channel's sockets.
fn control_backend(cfg: &VmConfig, vhost_socket: &Path, vsock_socket: &Path) -> ProcessPlan {
    let (program, mut args) = match &cfg.transport {
        Transport::Vsock => (
            cfg.vsock_binary.clone(),
            vec![
                "--guest-cid".to_owned(),
                GUEST_CID.to_string(),
                "--socket".into(),
            ],
        ),
        Transport::Serial { bridge } => (
            bridge.clone(),
            vec!["serial-bridge".to_owned(), "--listen".into()],
        ),
    };
    args.extend([
        path_arg(vhost_socket),
        "--uds-path".into(),
        path_arg(vsock_socket),
    ]);
    ProcessPlan {
        program,
        args,
        ..ProcessPlan::default()
    }
}

/// One share's virtiofsd and its socket.
///
/// - A writable share with an owner (a root daemon): run as the owner in a
///   user namespace where it is root (`--uid-map`), every guest id squashed
///   to it (`--translate-*`), no mknod or file capabilities, no set-id
///   bits (the filter); its listening socket made by skiff.
/// - Any other share of a root daemon: virtiofsd's namespace sandbox.
/// - A daemon of an ordinary user: its virtiofsd is that user already (no
///   sandbox, which would need a user namespace); a writable share still
///   gets the set-id filter.
fn virtiofsd_plan(
    cfg: &VmConfig,
    run: &Path,
    i: usize,
    share: &ShareDir,
) -> (ProcessPlan, PathBuf) {
    let socket = run.join(format!("fs{i}.sock"));
    // The owner cannot reach the runtime directory (root's, 0700): skiff
    // binds the socket and passes it.
    let mut args = match share.owner {
        Some(_) => vec!["--fd=3".to_owned()],
        None => vec!["--socket-path".to_owned(), path_arg(&socket)],
    };
    args.extend(["--shared-dir".to_owned(), path_arg(&share.source)]);
    let sandbox = if cfg.privileged || share.owner.is_some() {
        "namespace"
    } else {
        "none"
    };
    args.extend(["--sandbox".to_owned(), sandbox.to_owned()]);
    if let Some(o) = share.owner {
        let all = u32::MAX;
        args.extend([
            format!("--uid-map=:0:{}:1:", o.uid),
            format!("--gid-map=:0:{}:1:", o.gid),
            format!("--translate-uid=squash-guest:0:0:{all}"),
            format!("--translate-gid=squash-guest:0:0:{all}"),
            "--modcaps=-mknod:-setfcap".to_owned(),
            "--inode-file-handles=never".to_owned(),
        ]);
    }
    if share.mount.readonly {
        // Enforced by the host: read-only even for root in the guest.
        args.push("--readonly".to_owned());
    }
    let plan = ProcessPlan {
        program: cfg.virtiofsd_binary.clone(),
        args,
        run_as: share.owner,
        listener_fd3: share.owner.map(|_| socket.clone()),
        no_set_id_files: !share.mount.readonly,
    };
    (plan, socket)
}

/// Guest-initiated connections to host port P arrive on `<uds-path>_P`.
pub fn ready_socket_path(vsock_socket: &Path, port: u32) -> PathBuf {
    let mut s = vsock_socket.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A command line's first words, and the TSC workaround under TCG.
fn base_args(cfg: &VmConfig, words: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = words.iter().map(|s| (*s).to_owned()).collect();
    if cfg.accel == Accel::Tcg {
        args.push(TCG_TSC_KHZ.into());
    }
    args
}

/// The kernel command line for a VM.
pub fn kernel_cmdline(cfg: &VmConfig) -> String {
    if cfg.init == GuestInit::Mvm {
        return mvm_cmdline(cfg);
    }
    let mut args = base_args(
        cfg,
        &[
            "console=ttyS0",
            "quiet",
            "panic=-1",
            "pci=off",
            "8250.nr_uarts=1",
            "random.trust_cpu=on",
        ],
    );
    if cfg.init == GuestInit::Own {
        // The leased address, in the form the guest's own tools know.
        args.extend(cfg.tap.as_ref().and_then(|t| t.ip_arg()));
        args.extend(own_root_and_params(cfg));
        return args.join(" ");
    }
    if cfg.net.is_some() {
        args.extend(crate::usernet::UserNet::kernel_args());
    }
    if let Some(tap) = &cfg.tap {
        args.extend(tap.kernel_args());
    }
    if !cfg.drives.is_empty() || cfg.root_disk.is_some() {
        args.push("skiff.load=blk".into());
    }
    if cfg.root_disk.is_some() {
        args.push(format!("skiff.root={ROOT_DISK_SERIAL}"));
    }
    if matches!(cfg.transport, Transport::Serial { .. }) {
        args.push("skiff.load=serial".into());
        args.push("skiff.transport=serial".into());
        // Freed pages are zeroed, and a save skips zero pages: the idle
        // guest's snapshot shrank from 91 to 55 MiB (FACTS.md), its pause
        // and resume with it; the boot takes no longer.
        args.push("init_on_free=1".into());
    }
    if let GuestInit::System { target } = &cfg.init {
        args.push("skiff.init=system".into());
        args.push(format!("skiff.target={target}"));
    }
    args.extend(cfg.drives.iter().map(|d| d.mount.to_arg()));
    if let Some(root) = &cfg.rootfs {
        args.push("skiff.load=rootfs".into());
        let mode = if root.writable { "rw" } else { "overlay" };
        args.push(format!("skiff.rootfs={ROOTFS_TAG}@{mode}"));
    }
    if !cfg.shares.is_empty() {
        args.push("skiff.load=fs".into());
        args.extend(
            cfg.shares
                .iter()
                .map(|s| s.mount.to_arg().replacen("skiff.mount=", "skiff.share=", 1)),
        );
    }
    args.extend(cfg.extra_cmdline.iter().cloned());
    args.join(" ")
}

/// Nothing of skiff's in a guest with its own initrd reads `skiff.*`
/// arguments. Its root disk is /dev/vda; an initrd made for another VMM may
/// not know that unless told.
fn own_root_and_params(cfg: &VmConfig) -> Vec<String> {
    let mut args = Vec::new();
    let gives_root = cfg.extra_cmdline.iter().any(|a| a.starts_with("root="));
    if cfg.root_disk.is_some() && !gives_root {
        args.extend(["root=/dev/vda".to_owned(), "rw".to_owned()]);
    }
    args.extend(cfg.extra_cmdline.iter().cloned());
    args
}

/// mvm's command line (seed 000's `boot.kernelParams`, as mvm's host passes
/// them to Firecracker), the guest's address, then the spec's parameters.
fn mvm_cmdline(cfg: &VmConfig) -> String {
    let mut args = base_args(
        cfg,
        &[
            "console=ttyS0",
            "reboot=k",
            "panic=1",
            "net.ifnames=0",
            "8250.nr_uarts=1",
            "quiet",
            "loglevel=4",
            "pci=off",
            "random.trust_cpu=on",
        ],
    );
    let address = match (&cfg.tap, &cfg.net) {
        (Some(tap), _) => Some((tap.address.clone(), tap.gateway.clone())),
        (None, Some(_)) => Some((USER_NET_GUEST.to_owned(), USER_NET_GATEWAY.to_owned())),
        (None, None) => None,
    };
    if let Some((ip, gw)) = address {
        args.push(format!("mvm.ip={ip}"));
        args.push(format!("mvm.gw={gw}"));
    }
    args.extend(own_root_and_params(cfg));
    args.join(" ")
}

/// QEMU's arguments: the `microvm` machine with ACPI (so the guest finds its
/// virtio-mmio devices), memory from a shared memfd (vhost-user devices map
/// guest memory), the serial console in a file, vsock via vhost-user.
fn qemu_args(
    cfg: &VmConfig,
    vhost_socket: &Path,
    virtiofsd: &[(ProcessPlan, PathBuf)],
    qmp_socket: Option<&Path>,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    // QEMU's seccomp filter: no obsolete system calls, no fork/exec (the TAP
    // is opened by name, no helper script), no scheduling or resource
    // changes, and no set*id, except the one `-runas` needs to drop root
    // (after which set*id cannot raise privileges, and nothing can be
    // executed). A guest that breaks out of the device models meets it.
    match &cfg.run_as {
        Some(user) => push(&["-sandbox", QEMU_SECCOMP_RUNAS, "-runas", user]),
        None => push(&["-sandbox", QEMU_SECCOMP]),
    }
    let chardev = format!(
        "file,id=console,path={},append=on",
        path_arg(&cfg.console_log)
    );
    push(&["-chardev", &chardev, "-serial", "chardev:console"]);
    push(&[
        "-machine",
        "microvm,acpi=on,x-option-roms=off,pit=off,pic=off,rtc=on",
    ]);
    match cfg.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", TCG_ACCEL, "-cpu", "max"]),
    }
    let mem = format!("{}M", cfg.memory_mib);
    a.extend([
        "-smp".into(),
        cfg.cpus.to_string(),
        "-m".into(),
        mem.clone(),
    ]);
    let serial = matches!(cfg.transport, Transport::Serial { .. });
    if !serial {
        // vhost-user devices map guest memory: it must be shareable.
        a.extend([
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-numa".into(),
            "node,memdev=mem".into(),
        ]);
    }
    a.extend([
        "-kernel".into(),
        path_arg(&cfg.kernel),
        "-initrd".into(),
        path_arg(&cfg.initrd),
        "-append".into(),
        kernel_cmdline(cfg),
        // Lets the guest's service report success (QEMU exits 1) or failure
        // (exits 3); a plain power-off exits 0.
        "-device".into(),
        format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"),
    ]);
    let control = path_arg(vhost_socket).replace(',', ",,");
    if serial {
        a.extend([
            "-device".into(),
            "virtio-serial-device,max_ports=2".into(),
            "-chardev".into(),
            format!("socket,id=agent,path={control}"),
            "-device".into(),
            format!(
                "virtserialport,chardev=agent,name={}",
                skiff_proto::mux::PORT_NAME
            ),
        ]);
    } else {
        a.extend([
            "-chardev".into(),
            format!("socket,id=vsock0,path={control}"),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock0".into(),
        ]);
    }
    if let Some(qmp) = qmp_socket {
        a.push("-qmp".into());
        a.push(format!(
            "unix:{},server=on,wait=off",
            path_arg(qmp).replace(',', ",,")
        ));
    }
    if let Some(net) = &cfg.net {
        a.extend(net.qemu_args(&crate::usernet::mac_for(&cfg.vm_id)));
    }
    if let Some(tap) = &cfg.tap {
        a.extend(tap.qemu_args(&crate::usernet::mac_for(&cfg.vm_id)));
    }
    for (i, (share, (_, socket))) in cfg.all_shares().iter().zip(virtiofsd).enumerate() {
        a.push("-chardev".into());
        a.push(format!("socket,id=fs{i},path={}", path_arg(socket)));
        a.push("-device".into());
        a.push(format!(
            "vhost-user-fs-device,chardev=fs{i},tag={}",
            share.mount.label
        ));
    }
    // The root disk first, so that it is the first virtio block device
    // (/dev/vda, where images written for other VMMs expect it).
    if let Some(root) = &cfg.root_disk {
        let file = path_arg(&root.path).replace(',', ",,");
        a.push("-drive".into());
        a.push(format!(
            "file={file},if=none,id=root,format={},readonly=off",
            root.format.as_str()
        ));
        a.push("-device".into());
        a.push(format!(
            "virtio-blk-device,drive=root,serial={ROOT_DISK_SERIAL}"
        ));
    }
    for (i, d) in cfg.drives.iter().enumerate() {
        // QEMU option values escape a comma by doubling it.
        let file = path_arg(&d.path).replace(',', ",,");
        let ro = if d.mount.readonly { "on" } else { "off" };
        a.push("-drive".into());
        a.push(format!(
            "file={file},if=none,id=drive{i},format=raw,readonly={ro}"
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-device,drive=drive{i}"));
    }
    a
}

#[cfg(test)]
#[path = "plan_tests.rs"]
pub(crate) mod tests;
