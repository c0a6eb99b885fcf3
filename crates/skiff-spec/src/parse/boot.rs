//! How a VM boots: its root disk (`disk`) and who is PID 1 (`init`,
//! `target`).

use super::{absolute, expect_str, type_name, Errs, Fields};
use crate::{
    DiskSource, DiskSpec, GuestProfile, InitSpec, NetMode, Protocol, ReadySpec, VmSpec,
    DEFAULT_TARGET, MAX_READY_PATTERN,
};
use toml::Value;

/// `disk = "/path/base.qcow2"`, or `disk = { image = "NAME" | file = "/path",
/// persistent = true }`.
pub(super) fn disk(v: &Value, p: &str, errs: &mut Errs) -> Option<DiskSpec> {
    let (image, file, persistent) = match v {
        Value::String(s) => (None, Some(s.clone()), false),
        Value::Table(t) => {
            let mut f = Fields::new(t, p);
            let image = f.string("image", errs);
            let file = f.string("file", errs);
            let persistent = f.boolean("persistent", errs).unwrap_or(false);
            f.finish(&["image", "file", "persistent"], errs);
            (image, file, persistent)
        }
        other => {
            errs.push(
                p,
                format!(
                    "expected a disk image path or {{ image, file, persistent }}, found {}",
                    type_name(other)
                ),
            );
            return None;
        }
    };
    let source = match (image, file) {
        (Some(_), Some(_)) => {
            errs.push(
                p,
                "give either image (a built or pulled image) or file (a disk image of yours), not both",
            );
            return None;
        }
        (Some(name), None) => {
            if let Err(e) = super::check_image_name(&name) {
                errs.push(&format!("{p}.image"), e);
                return None;
            }
            DiskSource::Image(name)
        }
        (None, Some(file)) => {
            if !absolute(p, &file, errs) {
                return None;
            }
            DiskSource::File(file.into())
        }
        (None, None) => {
            errs.push(
                p,
                "missing the base: image = \"NAME\" (built with `skiff image build`) or file = \"/path/disk.qcow2\"",
            );
            return None;
        }
    };
    Some(DiskSpec { source, persistent })
}

/// `init = "agent" | "system"` and, for "system", `target = "UNIT.target"`.
pub(super) fn init(
    init: Option<&Value>,
    target: Option<&Value>,
    init_path: &str,
    target_path: &str,
    errs: &mut Errs,
) -> InitSpec {
    let target = target.and_then(|t| expect_str(t, target_path, errs).map(str::to_owned));
    if let Some(t) = &target {
        if !valid_unit(t) {
            errs.push(
                target_path,
                format!("{t:?} is not a systemd target; write it like \"multi-user.target\""),
            );
        }
    }
    match init.map(|v| expect_str(v, init_path, errs)) {
        None | Some(Some("agent")) => {
            if target.is_some() {
                errs.push(
                    target_path,
                    "only a guest with its own init has a target; add init = \"system\"",
                );
            }
            InitSpec::Agent
        }
        Some(Some("system")) => InitSpec::System {
            target: target.unwrap_or_else(|| DEFAULT_TARGET.to_owned()),
        },
        Some(Some(other)) => {
            errs.push(
                init_path,
                format!("unknown init {other:?}; allowed: \"agent\" (skiff's agent is PID 1) or \"system\" (the guest's own init, such as systemd)"),
            );
            InitSpec::Agent
        }
        Some(None) => InitSpec::Agent,
    }
}

/// A unit name systemd accepts for a target: `NAME.target`, with the
/// characters unit names allow.
fn valid_unit(t: &str) -> bool {
    t.len() <= 255
        && t.strip_suffix(".target").is_some_and(|stem| {
            !stem.is_empty()
                && stem
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
        })
}

/// The root choices that cannot go together.
pub(super) fn check_root(spec: &VmSpec, path: &str, errs: &mut Errs) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    if spec.disk.is_some() && (spec.rootfs.is_some() || spec.image.is_some()) {
        errs.push(
            &at("disk"),
            "a VM has one root: a disk, or rootfs/image (a directory shared with virtiofs), not both",
        );
    }
    if let InitSpec::System { .. } = spec.init {
        if spec.disk.is_none() {
            errs.push(
                &at("init"),
                "the guest's own init boots from its root disk; add disk = { image = \"NAME\" } or disk = \"/path/disk.qcow2\"",
            );
        }
        if spec.command.is_some() {
            errs.push(
                &at("command"),
                "a guest with its own init runs its services as units of that init; remove command (or use init = \"agent\")",
            );
        }
    }
}

/// `ready = { tcp = PORT }` or `ready = { console = "REGEX" }`.
pub(super) fn ready(v: &Value, p: &str, errs: &mut Errs) -> Option<ReadySpec> {
    let Value::Table(t) = v else {
        errs.push(
            p,
            format!(
                "expected {{ tcp = PORT }} or {{ console = \"PATTERN\" }}, found {}",
                type_name(v)
            ),
        );
        return None;
    };
    let mut f = Fields::new(t, p);
    let tcp = f.get("tcp").cloned();
    let console = f.get("console").cloned();
    f.finish(&["tcp", "console"], errs);
    match (tcp, console) {
        (Some(_), Some(_)) | (None, None) => {
            errs.push(
                p,
                "give one way to tell the guest is up: tcp = PORT (a guest port answers) or console = \"PATTERN\" (a console line matches)",
            );
            None
        }
        (Some(port), None) => {
            let pp = format!("{p}.tcp");
            let n = super::expect_int(&port, &pp, errs)?;
            match u16::try_from(n) {
                Ok(port) if port > 0 => Some(ReadySpec::Tcp(port)),
                _ => {
                    errs.push(&pp, format!("{n} is not a TCP port; allowed: 1 to 65535"));
                    None
                }
            }
        }
        (None, Some(pattern)) => {
            let pp = format!("{p}.console");
            let pattern = expect_str(&pattern, &pp, errs)?;
            if pattern.is_empty() || pattern.len() > MAX_READY_PATTERN {
                errs.push(
                    &pp,
                    format!("the pattern must have 1 to {MAX_READY_PATTERN} bytes"),
                );
                return None;
            }
            match regex::Regex::new(pattern) {
                // It would hold before the guest printed anything.
                Ok(re) if re.is_match("") => {
                    errs.push(
                        &pp,
                        format!("{pattern:?} matches an empty line, so it says nothing about the guest; match text the guest prints (\"login: *$\")"),
                    );
                    None
                }
                Ok(_) => Some(ReadySpec::Console(pattern.to_owned())),
                Err(e) => {
                    let why = e.to_string();
                    let last = why.lines().last().unwrap_or("invalid").trim();
                    errs.push(
                        &pp,
                        format!("{pattern:?} is not a regular expression: {last}"),
                    );
                    None
                }
            }
        }
    }
}

/// What a guest that boots its own initrd (and so has no skiff agent) can
/// and cannot ask for, and what `ready` needs.
pub(super) fn check_own_initrd(spec: &VmSpec, path: &str, errs: &mut Errs) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    if spec.guest == GuestProfile::Mvm {
        if spec.has_agent() {
            errs.push(
                &at("guest"),
                "an mvm guest boots its own kernel and initrd, with no skiff agent: add kernel = { path = \"/…/vmlinuz\", initrd = \"/…/initrd\" }",
            );
        }
        if spec.disk.is_none() {
            errs.push(
                &at("guest"),
                "an mvm guest's root is ext4 on /dev/vda: add disk = { image = \"NAME\" } or disk = \"/path/root.img\"",
            );
        }
        if !spec.volumes.is_empty() && spec.data.is_none() {
            errs.push(
                &at("volumes"),
                "an mvm guest finds its data drive as /dev/vdd, where the first volume would go without one: add data = { target = \"/mnt/data\", size = \"1G\" }",
            );
        }
    }
    if spec.has_agent() {
        if spec.ready.is_some() {
            errs.push(
                &at("ready"),
                "ready is for guests without skiff's agent (kernel.initrd); a VM with the agent is ready when its agent answers",
            );
        }
        return;
    }
    const NO_AGENT: &str = "is done by skiff's agent, which a guest booting its own initrd (kernel.initrd) does not have";
    if !spec.init.is_agent() {
        errs.push(
            &at("init"),
            "a guest with its own initrd starts its own init; remove init (or kernel.initrd, to boot through skiff's initramfs)",
        );
    }
    if spec.command.is_some() {
        errs.push(
            &at("command"),
            format!("running a command {NO_AGENT}; make it a service of the guest's init"),
        );
    }
    if spec.image.is_some() || spec.rootfs.is_some() {
        errs.push(
            &at(if spec.image.is_some() { "image" } else { "rootfs" }),
            format!("mounting a directory root {NO_AGENT}; boot it from disk = {{ image = \"NAME\" }} or disk = \"/path/disk.qcow2\""),
        );
    }
    let identity = [
        ("users", !spec.users.is_empty()),
        ("hostname", spec.hostname.is_some()),
        ("timezone", spec.timezone.is_some()),
        ("env", !spec.env.is_empty()),
    ];
    for (key, _) in identity.iter().filter(|(_, set)| *set) {
        errs.push(
            &at(key),
            format!("setting {key} {NO_AGENT}; configure it in the guest's image"),
        );
    }
    if let Some(ReadySpec::Tcp(port)) = spec.ready {
        let bridged = spec.network.iter().any(|n| n.mode == NetMode::Bridge);
        let user = spec.network.iter().any(|n| n.mode == NetMode::User);
        let forwarded = spec
            .forward_ports
            .iter()
            .any(|f| f.guest_port == port && f.protocol == Protocol::Tcp);
        let reachable = bridged || (user && forwarded);
        if !reachable {
            errs.push(
                &at("ready.tcp"),
                format!("the daemon reaches guest port {port} through a forward in user mode (forward_ports = [\"HOSTPORT:{port}\"]; there the guest's server must speak first, as SSH does) or at the guest's address on a managed network (mode = \"bridge\"); add one"),
            );
        }
    }
}
