//! Mounting the host's drives by ext4 label (never by device order), as the
//! kernel command line lists them (`skiff.mount=LABEL@TARGET@FLAGS`).

use crate::log;
use nix::mount::{mount, MsFlags};
use skiff_proto::guest::{ext4_label, MountArg};
use std::fs::File;
use std::io::Read;
use std::time::{Duration, Instant};

/// Mount the virtiofs shares named by `skiff.share=TAG@TARGET@FLAGS`.
pub fn mount_shares(cmdline: &str) {
    for value in cmdline
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("skiff.share="))
    {
        match MountArg::parse(value) {
            Some(m) => mount_at(&m.label, &m, "virtiofs"),
            None => log(format_args!("ignoring malformed skiff.share={value}")),
        }
    }
}

pub fn mount_from_cmdline(cmdline: &str) {
    let wanted: Vec<MountArg> = cmdline
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("skiff.mount="))
        .filter_map(|v| {
            let parsed = MountArg::parse(v);
            if parsed.is_none() {
                log(format_args!("ignoring malformed skiff.mount={v}"));
            }
            parsed
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    // Devices appear as their driver probes them; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut pending = wanted;
    loop {
        let labels = block_device_labels();
        pending.retain(|m| {
            let mut found = labels.iter().filter(|(_, l)| *l == m.label);
            match (found.next(), found.next()) {
                (Some((dev, _)), None) => {
                    mount_one(dev, m);
                    false
                }
                (Some((a, _)), Some((b, _))) => {
                    crate::problem(format!(
                        "two drives are labelled {:?} ({a} and {b}); not mounting either at {}",
                        m.label, m.target
                    ));
                    false
                }
                (None, _) => true,
            }
        });
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for m in pending {
        crate::problem(format!(
            "required drive {:?} (for {}) is missing",
            m.label, m.target
        ));
    }
}

/// (device path, ext4 label) of every virtio disk.
fn block_device_labels() -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // The host's drives are whole disks; the root disk (and its
    // partitions, which the image's author labelled) is not one of them.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let root_serial = crate::rootdisk::wanted(&cmdline).map(str::to_owned);
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") || e.path().join("partition").exists() {
            continue;
        }
        let serial = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        if root_serial.as_deref().is_some_and(|r| serial.trim() == r) {
            continue;
        }
        let dev = format!("/dev/{name}");
        let mut head = vec![0u8; 2048];
        let read = File::open(&dev).and_then(|mut f| f.read_exact(&mut head));
        if read.is_ok() {
            if let Some(label) = ext4_label(&head) {
                out.push((dev, label));
            }
        }
    }
    out
}

fn mount_one(dev: &str, m: &MountArg) {
    mount_at(dev, m, "ext4");
}

/// Create the mount point and mount `source` there with the flags asked.
fn mount_at(source: &str, m: &MountArg, fstype: &str) {
    if let Err(e) = std::fs::create_dir_all(&m.target) {
        return log(format_args!("cannot create {}: {e}", m.target));
    }
    if let Err(e) = mount(
        Some(source),
        m.target.as_str(),
        Some(fstype),
        flags_of(m),
        None::<&str>,
    ) {
        log(format_args!(
            "cannot mount {source} ({}, {fstype}) on {}: {e}",
            m.label, m.target
        ));
    }
}

fn flags_of(m: &MountArg) -> MsFlags {
    let mut flags = MsFlags::empty();
    for (on, flag) in [
        (m.readonly, MsFlags::MS_RDONLY),
        (m.noexec, MsFlags::MS_NOEXEC),
        (m.nosuid, MsFlags::MS_NOSUID),
        (m.nodev, MsFlags::MS_NODEV),
    ] {
        if on {
            flags |= flag;
        }
    }
    flags
}
