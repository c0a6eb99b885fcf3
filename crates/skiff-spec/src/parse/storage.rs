//! Shares and volumes in a spec.

use super::{absolute, mount_target, table_items, type_name, Errs, Fields};
use crate::{check_name, parse_size_mib, DataDrive, RootFsSpec, SecretSource, Share, Volume};
use std::collections::BTreeMap;
use toml::Value;

pub(super) fn shares(v: &Value, p: &str, errs: &mut Errs) -> Vec<Share> {
    let mut out: Vec<Share> = Vec::new();
    for (ip, t) in table_items(v, p, "share", errs) {
        let mut f = Fields::new(t, &ip);
        let source = f.string("source", errs);
        let target = f.string("target", errs);
        let readonly = f.boolean("readonly", errs).unwrap_or(false);
        let tag = f.string("tag", errs);
        f.finish(&["source", "target", "tag", "readonly"], errs);
        let (Some(source), Some(target)) = (source, target) else {
            errs.push(
                &ip,
                "a share needs both source (host directory) and target (guest path)",
            );
            continue;
        };
        if !absolute(&format!("{ip}.source"), &source, errs)
            || !mount_target(&format!("{ip}.target"), &target, errs)
        {
            continue;
        }
        let tag = tag.unwrap_or_else(|| format!("share{}", out.len()));
        if tag.is_empty()
            || tag.len() > 36
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errs.push(
                &format!("{ip}.tag"),
                format!("{tag:?} is not a valid tag; 1 to 36 letters, digits, '-' or '_'"),
            );
            continue;
        }
        if out.iter().any(|s| s.target == target) {
            errs.push(
                &format!("{ip}.target"),
                format!("{target:?} is already the target of another share"),
            );
            continue;
        }
        if out.iter().any(|s| s.tag == tag) {
            errs.push(
                &format!("{ip}.tag"),
                format!("{tag:?} is already the tag of another share"),
            );
            continue;
        }
        out.push(Share {
            source: source.into(),
            target,
            tag,
            readonly,
        });
    }
    out
}

pub(super) fn volumes(v: &Value, p: &str, errs: &mut Errs) -> Vec<Volume> {
    let mut out: Vec<Volume> = Vec::new();
    for (ip, t) in table_items(v, p, "volume", errs) {
        let mut f = Fields::new(t, &ip);
        let name = f.string("name", errs);
        let target = f.string("target", errs);
        let readonly = f.boolean("readonly", errs).unwrap_or(false);
        let size = match f.get("size") {
            None => None,
            Some(Value::Integer(n)) => u32::try_from(*n).ok().filter(|n| *n > 0).or_else(|| {
                errs.push(
                    &format!("{ip}.size"),
                    format!("{n} MiB is not a valid size"),
                );
                None
            }),
            Some(Value::String(s)) => match parse_size_mib(s) {
                Ok(m) if m > 0 && m <= u64::from(u32::MAX) => Some(m as u32),
                Ok(_) => {
                    errs.push(&format!("{ip}.size"), format!("{s:?} is not a valid size"));
                    None
                }
                Err(e) => {
                    errs.push(&format!("{ip}.size"), e);
                    None
                }
            },
            Some(other) => {
                errs.push(
                    &format!("{ip}.size"),
                    format!("expected a size, found {}", type_name(other)),
                );
                None
            }
        };
        f.finish(&["name", "target", "size", "readonly"], errs);
        let (Some(name), Some(target)) = (name, target) else {
            errs.push(&ip, "a volume needs a name and a target (guest path)");
            continue;
        };
        if let Err(e) = check_name(&name) {
            errs.push(&format!("{ip}.name"), e);
            continue;
        }
        if !mount_target(&format!("{ip}.target"), &target, errs) {
            continue;
        }
        if out.iter().any(|v| v.name == name) {
            errs.push(
                &format!("{ip}.name"),
                format!("volume {name:?} is attached twice"),
            );
            continue;
        }
        out.push(Volume {
            name,
            target,
            size_mib: size,
            readonly,
        });
    }
    out
}

/// `secrets = { NAME = { file = "/abs" } | { env = "VAR" } }`: the files of
/// the secrets drive. Only where to read them is stored, never the values.
pub(super) fn secrets(v: &Value, p: &str, errs: &mut Errs) -> BTreeMap<String, SecretSource> {
    let mut out = BTreeMap::new();
    let Value::Table(t) = v else {
        errs.push(
            p,
            format!("expected a table of secrets, found {}", type_name(v)),
        );
        return out;
    };
    for (name, src) in t {
        let sp = format!("{p}.{name}");
        let valid = !name.is_empty()
            && name.len() <= 64
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            errs.push(
                &sp,
                "not a valid secret name; use 1 to 64 letters, digits, '.', '_' or '-'",
            );
            continue;
        }
        let Value::Table(st) = src else {
            errs.push(
                &sp,
                format!(
                    "expected {{ file = \"/path\" }} or {{ env = \"VAR\" }}, found {}",
                    type_name(src)
                ),
            );
            continue;
        };
        let mut f = Fields::new(st, &sp);
        let file = f.string("file", errs);
        let env = f.string("env", errs);
        f.finish(&["file", "env"], errs);
        match (file, env) {
            (Some(file), None) => {
                if absolute(&format!("{sp}.file"), &file, errs) {
                    out.insert(name.clone(), SecretSource::File(file.into()));
                }
            }
            (None, Some(var)) if !var.is_empty() => {
                out.insert(name.clone(), SecretSource::Env(var));
            }
            _ => errs.push(&sp, "give exactly one of file = \"/path\" or env = \"VAR\""),
        }
    }
    out
}

/// `data = { target = "/data", size = "1G" }`.
pub(super) fn data(v: &Value, p: &str, errs: &mut Errs) -> Option<DataDrive> {
    let Value::Table(t) = v else {
        errs.push(
            p,
            format!(
                "expected {{ target = \"/path\", size = \"1G\" }}, found {}",
                type_name(v)
            ),
        );
        return None;
    };
    let mut f = Fields::new(t, p);
    let target = f.string("target", errs);
    let size = match f.get("size") {
        None => Some(1024),
        Some(Value::Integer(n)) => u32::try_from(*n).ok().filter(|n| *n >= 16),
        Some(Value::String(s)) => parse_size_mib(s)
            .ok()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| *m >= 16),
        Some(_) => None,
    };
    f.finish(&["target", "size"], errs);
    let Some(size_mib) = size else {
        errs.push(
            &format!("{p}.size"),
            "not a valid size; at least 16 MiB, like \"1G\" or 512",
        );
        return None;
    };
    let Some(target) = target else {
        errs.push(
            &format!("{p}.target"),
            "missing; where the drive is mounted in the guest",
        );
        return None;
    };
    mount_target(&format!("{p}.target"), &target, errs).then_some(DataDrive { target, size_mib })
}

/// `rootfs = "/dir"` or `rootfs = { path = "/dir", writable = true }`.
pub(super) fn rootfs(v: &Value, p: &str, errs: &mut Errs) -> Option<RootFsSpec> {
    let (path, writable) = match v {
        Value::String(s) => (Some(s.clone()), false),
        Value::Table(t) => {
            let mut f = Fields::new(t, p);
            let path = f.string("path", errs);
            let writable = f.boolean("writable", errs).unwrap_or(false);
            f.finish(&["path", "writable"], errs);
            (path, writable)
        }
        other => {
            errs.push(
                p,
                format!(
                    "expected a directory path or {{ path, writable }}, found {}",
                    type_name(other)
                ),
            );
            return None;
        }
    };
    let Some(path) = path else {
        errs.push(
            &format!("{p}.path"),
            "missing; the host directory to boot into",
        );
        return None;
    };
    absolute(p, &path, errs).then(|| RootFsSpec {
        path: path.into(),
        writable,
    })
}
