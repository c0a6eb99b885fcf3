//! From TOML text to validated [`VmSpec`]s, collecting every problem.
//!
//! The TOML is walked by hand rather than deserialized with serde, because
//! serde stops at the first problem and a user fixing a spec wants them all.

mod boot;
mod http;
mod identity;
pub use http::{check_domain, DomainError};
mod net;
mod pause;
mod restart;
mod storage;
pub use net::{parse_forward, ForwardError};

use crate::*;
use std::collections::BTreeSet;
use toml::{Table, Value};

#[derive(Default)]
struct Errs(Vec<SpecError>);

impl Errs {
    fn push(&mut self, path: &str, message: impl std::fmt::Display) {
        self.0.push(SpecError {
            path: path.to_owned(),
            message: message.to_string(),
        });
    }
}

/// An image as a spec names it: a recipe image's name (`python`) or an OCI
/// image reference (`python:3.12-slim`, `ghcr.io/org/app@sha256:…`). The
/// cache finds it; this only keeps out what neither can be.
pub(crate) fn check_image_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/:@".contains(c);
    let starts_well = name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !starts_well || name.len() > 255 || !name.chars().all(allowed) {
        return Err(format!(
            "{name:?} is not an image name or reference; give a built image's name (`skiff image ls`) or a reference such as registry.example/team/app:1.0 (at most 255 of a-z A-Z 0-9 . _ - / : @, starting with a letter or digit)"
        ));
    }
    Ok(())
}

/// The keys of one TOML table, tracking which were read so that the rest
/// can be reported as unknown.
struct Fields<'a> {
    table: &'a Table,
    path: String,
    used: BTreeSet<&'a str>,
}

impl<'a> Fields<'a> {
    fn new(table: &'a Table, path: &str) -> Fields<'a> {
        Fields {
            table,
            path: path.to_owned(),
            used: BTreeSet::new(),
        }
    }

    fn get(&mut self, key: &'a str) -> Option<&'a Value> {
        self.used.insert(key);
        self.table.get(key)
    }

    fn sub(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// An optional string field (a wrong type is reported).
    fn string(&mut self, key: &'a str, errs: &mut Errs) -> Option<String> {
        let path = self.sub(key);
        self.get(key)
            .and_then(|v| expect_str(v, &path, errs))
            .map(str::to_owned)
    }

    /// An optional boolean field (a wrong type is reported).
    fn boolean(&mut self, key: &'a str, errs: &mut Errs) -> Option<bool> {
        let path = self.sub(key);
        self.get(key).and_then(|v| expect_bool(v, &path, errs))
    }

    /// Report keys that were never read.
    fn finish(self, allowed: &[&str], errs: &mut Errs) {
        for key in self.table.keys() {
            if !self.used.contains(key.as_str()) {
                errs.push(
                    &self.sub(key),
                    format!("unknown field; allowed here: {}", allowed.join(", ")),
                );
            }
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn expect_str<'v>(v: &'v Value, path: &str, errs: &mut Errs) -> Option<&'v str> {
    match v {
        Value::String(s) => Some(s),
        other => {
            errs.push(
                path,
                format!("expected a string, found {}", type_name(other)),
            );
            None
        }
    }
}

fn expect_bool(v: &Value, path: &str, errs: &mut Errs) -> Option<bool> {
    match v {
        Value::Boolean(b) => Some(*b),
        other => {
            errs.push(
                path,
                format!("expected true or false, found {}", type_name(other)),
            );
            None
        }
    }
}

fn expect_int(v: &Value, path: &str, errs: &mut Errs) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        other => {
            errs.push(
                path,
                format!("expected an integer, found {}", type_name(other)),
            );
            None
        }
    }
}

fn expect_table<'v>(v: &'v Value, path: &str, errs: &mut Errs) -> Option<&'v Table> {
    match v {
        Value::Table(t) => Some(t),
        other => {
            errs.push(
                path,
                format!("expected a table, found {}", type_name(other)),
            );
            None
        }
    }
}

fn expect_strings(v: &Value, path: &str, errs: &mut Errs) -> Option<Vec<String>> {
    let Value::Array(items) = v else {
        errs.push(
            path,
            format!("expected an array of strings, found {}", type_name(v)),
        );
        return None;
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        out.push(expect_str(item, &format!("{path}[{i}]"), errs)?.to_owned());
    }
    Some(out)
}

fn absolute(path: &str, value: &str, errs: &mut Errs) -> bool {
    if !value.starts_with('/') {
        errs.push(
            path,
            format!("{value:?} must be an absolute path (starting with /)"),
        );
        return false;
    }
    true
}

/// A guest path a drive or share is mounted on. It travels on the kernel
/// command line (`skiff.mount=LABEL@TARGET@FLAGS`), so it must be one plain
/// word there: absolute, without whitespace, quotes, `@` or control
/// characters, and without `.` or `..` parts.
fn mount_target(path: &str, value: &str, errs: &mut Errs) -> bool {
    if !absolute(path, value, errs) {
        return false;
    }
    let plain = value.len() <= 255
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '@' | '\\'))
        && value[1..]
            .split('/')
            .all(|part| part != "." && part != "..")
        && (value == "/" || !value[1..].split('/').any(str::is_empty));
    if !plain {
        errs.push(
            path,
            format!("{value:?} is not a plain guest path: write it without spaces, quotes, '@', '\\', '.' or '..' parts or repeated slashes (at most 255 bytes)"),
        );
    }
    plain
}

/// Kernel parameters skiff sets itself: a spec overriding them would break
/// the boot or the agent's contract (`skiff.*` carries mounts and roles).
pub const RESERVED_PARAMS: &[&str] = &["init=", "rdinit=", "panic=", "skiff."];

/// Parse a spec file: either `[vm.NAME]` tables (one or more VMs), or the
/// fields of a single VM at the top level with a `name`.
pub fn parse_file(text: &str) -> Result<Vec<VmSpec>, SpecErrors> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        SpecErrors(vec![SpecError {
            path: String::new(),
            message: format!("not valid TOML: {}", e.message().trim()),
        }])
    })?;
    let mut errs = Errs::default();
    let mut specs = Vec::new();
    match table.get("vm") {
        Some(vms) => {
            for key in table.keys().filter(|k| k.as_str() != "vm") {
                errs.push(
                    key,
                    "unknown top-level field; a file with [vm.NAME] tables may hold only those",
                );
            }
            if let Some(vms) = expect_table(vms, "vm", &mut errs) {
                if vms.is_empty() {
                    errs.push("vm", "no VM defined; add a [vm.NAME] table");
                }
                for (name, body) in vms {
                    let path = format!("vm.{name}");
                    if let Some(body) = expect_table(body, &path, &mut errs) {
                        if let Some(spec) = vm_table(name, body, &path, &mut errs) {
                            specs.push(spec);
                        }
                    }
                }
            }
        }
        None => {
            let name = match table.get("name") {
                Some(v) => expect_str(v, "name", &mut errs)
                    .unwrap_or_default()
                    .to_owned(),
                None => {
                    errs.push(
                        "name",
                        "missing; name the VM (name = \"web\") or use [vm.NAME] tables",
                    );
                    String::new()
                }
            };
            let mut rest = table.clone();
            rest.remove("name");
            if let Some(spec) = vm_table(&name, &rest, "", &mut errs) {
                specs.push(spec);
            }
        }
    }
    // One domain, one VM.
    let mut owners: Vec<(&str, &str)> = Vec::new();
    for spec in &specs {
        for d in spec.http.iter().flat_map(|h| &h.domains) {
            match owners.iter().find(|(od, _)| od == d) {
                Some((_, other)) if *other != spec.name => errs.push(
                    &format!("vm.{}.http.domains", spec.name),
                    format!("{d:?} is already served by vm.{other}; a domain routes to one VM"),
                ),
                Some(_) => {}
                None => owners.push((d, &spec.name)),
            }
        }
    }
    if errs.0.is_empty() {
        Ok(specs)
    } else {
        Err(SpecErrors(errs.0))
    }
}

/// Parse the body of one `[vm.NAME]` table.
pub fn parse_vm_table(name: &str, body: &Table) -> Result<VmSpec, SpecErrors> {
    let mut errs = Errs::default();
    let path = format!("vm.{name}");
    match vm_table(name, body, &path, &mut errs) {
        Some(spec) if errs.0.is_empty() => Ok(spec),
        _ => Err(SpecErrors(errs.0)),
    }
}

const VM_FIELDS: &[&str] = &[
    "vcpus",
    "memory",
    "kernel",
    "image",
    "hypervisor",
    "accel",
    "network",
    "forward_ports",
    "shares",
    "volumes",
    "data",
    "rootfs",
    "disk",
    "init",
    "target",
    "hostname",
    "timezone",
    "users",
    "guest",
    "ready",
    "env",
    "secrets",
    "command",
    "autostart",
    "pausable",
    "sleep_after",
    "restart_if_changed",
    "restart",
    "http",
];

fn vm_table(name: &str, body: &Table, path: &str, errs: &mut Errs) -> Option<VmSpec> {
    let before = errs.0.len();
    let name_path = if path.is_empty() {
        "name".to_owned()
    } else {
        path.to_owned()
    };
    if let Err(e) = check_name(name) {
        errs.push(&name_path, e);
    }
    let mut spec = VmSpec::with_defaults(name);
    let mut f = Fields::new(body, path);

    if let Some(v) = f.get("vcpus") {
        let p = f.sub("vcpus");
        if let Some(n) = expect_int(v, &p, errs) {
            match u32::try_from(n) {
                Ok(n) if (1..=MAX_VCPUS).contains(&n) => spec.vcpus = n,
                _ => errs.push(
                    &p,
                    format!("{n} is out of range; allowed: 1 to {MAX_VCPUS}"),
                ),
            }
        }
    }
    if let Some(v) = f.get("memory") {
        let p = f.sub("memory");
        let mib = match v {
            Value::Integer(n) => u64::try_from(*n).map_err(|_| format!("{n} MiB is negative")),
            Value::String(s) => parse_size_mib(s).map_err(|e| e.to_string()),
            other => Err(format!(
                "expected MiB as an integer or a string like \"512M\", found {}",
                type_name(other)
            )),
        };
        match mib {
            Ok(m) if m < u64::from(MIN_MEMORY_MIB) => errs.push(
                &p,
                format!("{m} MiB is below the {MIN_MEMORY_MIB} MiB minimum"),
            ),
            Ok(m) if m > u64::from(MAX_MEMORY_MIB) => errs.push(
                &p,
                format!("{m} MiB is above the {MAX_MEMORY_MIB} MiB maximum"),
            ),
            Ok(m) => spec.memory_mib = m as u32,
            Err(e) => errs.push(&p, e),
        }
    }
    if let Some(v) = f.get("kernel") {
        spec.kernel = kernel(v, &f.sub("kernel"), errs);
    }
    if let Some(v) = f.get("image") {
        let p = f.sub("image");
        spec.image = expect_str(v, &p, errs).and_then(|name| match check_image_name(name) {
            Ok(()) => Some(name.to_owned()),
            Err(e) => {
                errs.push(&p, e);
                None
            }
        });
    }
    if let Some(v) = f.get("hypervisor") {
        let p = f.sub("hypervisor");
        match expect_str(v, &p, errs) {
            Some("qemu") | None => {}
            Some(h @ ("firecracker" | "cloud-hypervisor")) => {
                errs.push(&p, format!("{h:?} is not supported yet; allowed: \"qemu\""))
            }
            Some(other) => errs.push(
                &p,
                format!("unknown hypervisor {other:?}; allowed: \"qemu\""),
            ),
        }
    }
    if let Some(v) = f.get("accel") {
        let p = f.sub("accel");
        match expect_str(v, &p, errs) {
            Some("auto") => spec.accel = Accel::Auto,
            Some("kvm") => spec.accel = Accel::Kvm,
            Some("tcg") => spec.accel = Accel::Tcg,
            Some(other) => errs.push(
                &p,
                format!("unknown accelerator {other:?}; allowed: \"auto\", \"kvm\", \"tcg\""),
            ),
            None => {}
        }
    }
    if let Some(v) = f.get("network") {
        spec.network = net::networks(v, &f.sub("network"), errs);
    }
    if let Some(v) = f.get("forward_ports") {
        spec.forward_ports = net::forwards(v, &f.sub("forward_ports"), errs);
    }
    if let Some(v) = f.get("shares") {
        spec.shares = storage::shares(v, &f.sub("shares"), errs);
    }
    if let Some(v) = f.get("volumes") {
        spec.volumes = storage::volumes(v, &f.sub("volumes"), errs);
    }
    if let Some(v) = f.get("rootfs") {
        spec.rootfs = storage::rootfs(v, &f.sub("rootfs"), errs);
    }
    if let Some(v) = f.get("disk") {
        spec.disk = boot::disk(v, &f.sub("disk"), errs);
    }
    let init = f.get("init").cloned();
    let target = f.get("target").cloned();
    spec.init = boot::init(
        init.as_ref(),
        target.as_ref(),
        &f.sub("init"),
        &f.sub("target"),
        errs,
    );
    if let Some(v) = f.get("hostname") {
        spec.hostname = identity::hostname(v, &f.sub("hostname"), errs);
    }
    if let Some(v) = f.get("timezone") {
        spec.timezone = identity::timezone(v, &f.sub("timezone"), errs);
    }
    if let Some(v) = f.get("users") {
        spec.users = identity::users(v, &f.sub("users"), errs);
    }
    if let Some(v) = f.get("guest") {
        let p = f.sub("guest");
        match expect_str(v, &p, errs) {
            Some("skiff") => spec.guest = crate::GuestProfile::Skiff,
            Some("mvm") => spec.guest = crate::GuestProfile::Mvm,
            Some(other) => errs.push(
                &p,
                format!("unknown guest contract {other:?}; allowed: \"skiff\" (the default) or \"mvm\" (mvm's drives and kernel arguments)"),
            ),
            None => {}
        }
    }
    if let Some(v) = f.get("ready") {
        spec.ready = boot::ready(v, &f.sub("ready"), errs);
    }
    if let Some(v) = f.get("data") {
        spec.data = storage::data(v, &f.sub("data"), errs);
    }
    if let Some(v) = f.get("secrets") {
        spec.secrets = storage::secrets(v, &f.sub("secrets"), errs);
    }
    if let Some(v) = f.get("env") {
        let p = f.sub("env");
        if let Some(t) = expect_table(v, &p, errs) {
            for (k, val) in t {
                let kp = format!("{p}.{k}");
                let valid_key = !k.is_empty()
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !k.as_bytes()[0].is_ascii_digit();
                if !valid_key {
                    errs.push(&kp, "not a valid variable name; use letters, digits and _, not starting with a digit");
                }
                if let Some(s) = expect_str(val, &kp, errs) {
                    spec.env.insert(k.clone(), s.to_owned());
                }
            }
        }
    }
    if let Some(v) = f.get("command") {
        let p = f.sub("command");
        spec.command = match v {
            Value::String(s) if !s.trim().is_empty() => {
                Some(vec!["/bin/sh".into(), "-c".into(), s.clone()])
            }
            Value::Array(a) if a.is_empty() => {
                errs.push(&p, "empty command; give the program and its arguments");
                None
            }
            Value::String(_) => {
                errs.push(&p, "empty command; give the program and its arguments");
                None
            }
            other => expect_strings(other, &p, errs),
        };
    }
    if let Some(v) = f.get("autostart") {
        spec.autostart = expect_bool(v, &f.sub("autostart"), errs).unwrap_or(false);
    }
    pause::pause_fields(&mut f, &mut spec, errs);
    if let Some(v) = f.get("restart_if_changed") {
        spec.restart_if_changed =
            expect_bool(v, &f.sub("restart_if_changed"), errs).unwrap_or(true);
    }
    if let Some(v) = f.get("restart") {
        spec.restart = restart::restart(v, &f.sub("restart"), errs);
    }
    if let Some(v) = f.get("http") {
        spec.http = http::http(v, &f.sub("http"), errs);
        let bridged = spec.network.iter().any(|n| n.mode == NetMode::Bridge);
        if spec.http.is_some() && !bridged {
            errs.push(
                &f.sub("http"),
                "the proxy reaches a VM at its address on a managed network: add network = { mode = \"bridge\", network = \"NAME\" }",
            );
        }
    }
    f.finish(VM_FIELDS, errs);
    boot::check_root(&spec, path, errs);
    boot::check_own_initrd(&spec, path, errs);
    let has_nic = spec.network.iter().any(|n| n.mode != NetMode::None);
    if !spec.forward_ports.is_empty() && !has_nic {
        let p = if path.is_empty() {
            "forward_ports".to_owned()
        } else {
            format!("{path}.forward_ports")
        };
        errs.push(
            &p,
            "port forwards need a network interface of mode \"user\" or \"bridge\"",
        );
    }
    (errs.0.len() == before).then_some(spec)
}

fn kernel(v: &Value, p: &str, errs: &mut Errs) -> Option<KernelSpec> {
    let mut k = KernelSpec {
        path: None,
        modules: None,
        initrd: None,
        params: Vec::new(),
    };
    match v {
        Value::String(s) => {
            absolute(p, s, errs).then(|| k.path = Some(s.into()));
        }
        Value::Table(t) => {
            let mut f = Fields::new(t, p);
            if let Some(v) = f.get("path") {
                let pp = f.sub("path");
                if let Some(s) = expect_str(v, &pp, errs) {
                    absolute(&pp, s, errs).then(|| k.path = Some(s.into()));
                }
            }
            if let Some(v) = f.get("modules") {
                let pp = f.sub("modules");
                if let Some(s) = expect_str(v, &pp, errs) {
                    absolute(&pp, s, errs).then(|| k.modules = Some(s.into()));
                }
            }
            if let Some(v) = f.get("initrd") {
                let pp = f.sub("initrd");
                if let Some(s) = expect_str(v, &pp, errs) {
                    absolute(&pp, s, errs).then(|| k.initrd = Some(s.into()));
                }
            }
            if let Some(v) = f.get("params") {
                let pp = f.sub("params");
                for (i, param) in expect_strings(v, &pp, errs)
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    if param.is_empty()
                        || param
                            .chars()
                            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
                    {
                        errs.push(&format!("{pp}[{i}]"), format!("{param:?} must be one word without spaces, quotes or control characters"));
                    } else {
                        k.params.push(param);
                    }
                }
            }
            if k.modules.is_some() && k.path.is_none() {
                errs.push(
                    &f.sub("modules"),
                    "given without kernel.path; modules belong to a kernel you name",
                );
            }
            // skiff's initramfs reads init=, rdinit= and panic= of its own;
            // a guest's own initrd may need them (a microvm.nix runner's
            // init=), and only skiff.* stays skiff's.
            let reserved: &[&str] = if k.initrd.is_some() {
                &["skiff."]
            } else {
                RESERVED_PARAMS
            };
            for (i, param) in k.params.iter().enumerate() {
                if let Some(r) = reserved.iter().find(|r| param.starts_with(**r)) {
                    errs.push(
                        &format!("{}[{i}]", f.sub("params")),
                        format!("{param:?} sets {r}, which skiff sets itself; remove it"),
                    );
                }
            }
            if k.initrd.is_some() && k.path.is_none() {
                errs.push(
                    &f.sub("initrd"),
                    "given without kernel.path; an initrd works with the kernel it was made for: name both",
                );
            }
            if k.initrd.is_some() && k.modules.is_some() {
                errs.push(
                    &f.sub("modules"),
                    "modules go into skiff's initramfs, which a guest with its own initrd does not boot; remove modules",
                );
            }
            f.finish(&["path", "modules", "initrd", "params"], errs);
        }
        other => errs.push(
            p,
            format!("expected a path or a table, found {}", type_name(other)),
        ),
    }
    Some(k)
}

fn table_items<'v>(v: &'v Value, p: &str, what: &str, errs: &mut Errs) -> Vec<(String, &'v Table)> {
    let Value::Array(items) = v else {
        errs.push(
            p,
            format!(
                "expected an array of {what} tables ([[...]]), found {}",
                type_name(v)
            ),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let ip = format!("{p}[{i}]");
            expect_table(item, &ip, errs).map(|t| (ip, t))
        })
        .collect()
}
