//! Parsers for command-line values (`-v`, `-p`, `-e`, `--rootfs`/`--image`).

use crate::run_spec;
use anyhow::{Context, Result};
use std::path::PathBuf;

pub fn parse_share(s: &str) -> Result<run_spec::RunShare, String> {
    let usage = || format!("{s:?} is not HOST_DIR:GUEST_PATH[:ro] (example: -v ./src:/work:ro)");
    let (rest, readonly) = match s.strip_suffix(":ro") {
        Some(r) => (r, true),
        None => (s.strip_suffix(":rw").unwrap_or(s), false),
    };
    let (host, guest) = rest.rsplit_once(':').ok_or_else(usage)?;
    if host.is_empty()
        || !guest.starts_with('/')
        || guest.contains(char::is_whitespace)
        || guest.contains('@')
    {
        return Err(usage());
    }
    let source = std::path::absolute(host).map_err(|e| format!("{host}: {e}"))?;
    if !source.is_dir() {
        return Err(format!("{} is not an existing directory", source.display()));
    }
    Ok(run_spec::RunShare {
        source,
        target: guest.to_owned(),
        readonly,
    })
}

pub fn parse_publish(s: &str) -> Result<String, String> {
    skiff_spec::parse_forward(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE (example: --env LANG=C.UTF-8)"))?;
    if k.is_empty() || k.contains('\0') || v.contains('\0') {
        return Err(format!(
            "{s:?}: the name must be non-empty and neither part may contain NUL"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// `--rootfs DIR [--rootfs-rw]` or `--image NAME` (found already), checked
/// and made absolute.
pub fn rootfs_arg(
    dir: &Option<PathBuf>,
    writable: bool,
    image: Option<&skiff_image::ImageInfo>,
) -> Result<Option<run_spec::RunRootFs>> {
    if let Some(info) = image {
        return Ok(Some(run_spec::RunRootFs {
            source: info.root.clone(),
            writable: false,
        }));
    }
    let Some(dir) = dir else { return Ok(None) };
    let source = std::path::absolute(dir).with_context(|| format!("bad path {}", dir.display()))?;
    if !source.is_dir() {
        anyhow::bail!("--rootfs {} is not an existing directory", source.display());
    }
    Ok(Some(run_spec::RunRootFs { source, writable }))
}

/// `--memory`: MiB, or a size with a unit (`512m`, `2G`), within QEMU's
/// limits.
pub fn parse_memory(s: &str) -> Result<u32, String> {
    // Docker writes units in lower case; the spec's parser wants them up.
    let mib = skiff_spec::parse_size_mib(&s.to_ascii_uppercase()).map_err(|e| e.to_string())?;
    let (min, max) = (
        u64::from(skiff_vmm::plan::MIN_MEMORY_MIB),
        u64::from(skiff_vmm::plan::MAX_MEMORY_MIB),
    );
    if !(min..=max).contains(&mib) {
        return Err(format!(
            "{s}: memory must be at least {min} MiB and at most {max} MiB"
        ));
    }
    u32::try_from(mib).map_err(|_| format!("{s}: too large"))
}

/// One `ls --filter KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmFilter {
    State(String),
    /// A part of the name.
    Name(String),
}

pub fn parse_filter(s: &str) -> Result<VmFilter, String> {
    match s.split_once('=') {
        Some(("state", v)) => Ok(VmFilter::State(v.to_owned())),
        Some(("name", v)) => Ok(VmFilter::Name(v.to_owned())),
        _ => Err(format!(
            "{s:?} is not a filter; use state=STATE or name=PART"
        )),
    }
}
