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

/// `logs --since`: a Unix time in seconds, an RFC 3339 time
/// (`2026-12-02T10:00:00Z`), or a time before now (`90s`, `10m`, `1h30m`,
/// `2d`), as docker takes it. The answer is Unix seconds.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    since_at(s, now)
}

fn since_at(s: &str, now: u64) -> Result<u64, String> {
    let usage = || {
        format!("{s:?} is not a time: give Unix seconds, an RFC 3339 time (2026-12-02T10:00:00Z) or a duration before now (90s, 10m, 1h30m, 2d)")
    };
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return u64::try_from(t.unix_timestamp()).map_err(|_| usage());
    }
    // A duration: number-unit pairs.
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(usage()),
        };
        let n: u64 = digits.parse().map_err(|_| usage())?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() || total == 0 && !s.starts_with('0') {
        return Err(usage());
    }
    Ok(now.saturating_sub(total))
}

#[cfg(test)]
mod since_tests {
    use super::since_at;

    #[test]
    fn since_takes_unix_seconds_rfc3339_and_durations_before_now() {
        let now = 1_000_000;
        assert_eq!(since_at("123", now), Ok(123));
        assert_eq!(since_at("1970-01-02T00:00:00Z", now), Ok(86_400));
        assert_eq!(since_at("1970-01-02T01:00:00+01:00", now), Ok(86_400));
        assert_eq!(since_at("90s", now), Ok(now - 90));
        assert_eq!(since_at("1h30m", now), Ok(now - 5400));
        assert_eq!(since_at("2d", now), Ok(now - 172_800));
        for bad in ["", "ten minutes", "10x", "m", "-5m", "2026-13-01T00:00:00Z"] {
            let err = since_at(bad, now).expect_err(bad);
            assert!(err.contains("is not a time"), "{err}");
        }
    }
}
