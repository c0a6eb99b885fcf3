//! How a VM boots: its root disk (`disk`) and who is PID 1 (`init`,
//! `target`).

use super::{absolute, expect_str, type_name, Errs, Fields};
use crate::{DiskSource, DiskSpec, InitSpec, VmSpec, DEFAULT_TARGET};
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
