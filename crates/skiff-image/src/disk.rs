//! Root disks: an image's root directory as an ext4 disk (built once,
//! beside the directory in the cache, shared read-only by every VM), and
//! the per-VM copy-on-write layer over a base disk (a qcow2 file whose
//! backing file is the base, made with `qemu-img`).

use crate::tool::run_tool;
use crate::{make_ext4, Error, ImageInfo, Progress};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The label of a root disk skiff builds.
pub const ROOT_LABEL: &str = "skiff-root";

/// How a disk image file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    Raw,
    Qcow2,
}

impl DiskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskKind::Raw => "raw",
            DiskKind::Qcow2 => "qcow2",
        }
    }
}

/// Tell a qcow2 file (by its magic, `QFI\xfb`) from a raw one.
pub fn disk_kind(path: &Path) -> Result<DiskKind, Error> {
    let meta = fs::metadata(path).map_err(|e| Error::io("read", path, e))?;
    if !meta.is_file() {
        return Err(Error::NotADisk {
            path: path.to_owned(),
            why: "not a regular file",
        });
    }
    let mut magic = [0u8; 4];
    let mut f = fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let n = f.read(&mut magic).map_err(|e| Error::io("read", path, e))?;
    if n == 4 && magic == *b"QFI\xfb" {
        return Ok(DiskKind::Qcow2);
    }
    if meta.len() < 1024 * 1024 {
        return Err(Error::NotADisk {
            path: path.to_owned(),
            why: "smaller than 1 MiB, so no filesystem fits",
        });
    }
    Ok(DiskKind::Raw)
}

/// Where an image's root disk lives in the cache.
pub fn image_disk_path(info: &ImageInfo) -> PathBuf {
    info.root.with_file_name("disk.ext4")
}

/// The image's root directory as an ext4 disk, built the first time it is
/// asked for (sparse: free space costs nothing until the guest writes).
pub fn ensure_image_disk(info: &ImageInfo, progress: &dyn Progress) -> Result<PathBuf, Error> {
    let disk = image_disk_path(info);
    if disk.is_file() {
        return Ok(disk);
    }
    let used_mib = tree_size(&info.root) / (1024 * 1024);
    // Room to work in: a dev box installs packages into its root.
    let size_mib = (used_mib * 2).max(used_mib + 2048);
    let size_mib = u32::try_from(size_mib).map_err(|_| Error::NotADisk {
        path: info.root.clone(),
        why: "too large for a root disk",
    })?;
    progress.step(&format!(
        "root disk of image {} ({used_mib} MiB used, {size_mib} MiB)",
        info.name
    ));
    // Built under a name of its own, then linked into place only if no
    // other boot got there first: VMs' layers refer to the base by path,
    // so a base in use must never be replaced (two builds of one tree
    // differ in UUIDs and timestamps).
    let staging = disk.with_extension(format!("ext4.{}.partial", std::process::id()));
    let _ = fs::remove_file(&staging);
    make_ext4(ROOT_LABEL, Some(&info.root), &staging, size_mib, true)?;
    let linked = fs::hard_link(&staging, &disk);
    let _ = fs::remove_file(&staging);
    match linked {
        Ok(()) => Ok(disk),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(disk),
        Err(e) => Err(Error::io("move into place", &disk, e)),
    }
}

/// Bytes of the regular files under `dir` (symlinks not followed).
/// A size for people: `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The bytes of the regular files under `dir` (what an image holds).
pub fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// The `qemu-img` arguments that make `overlay` a qcow2 whose backing file
/// is `base` (which is only ever read).
pub fn overlay_args(base: &Path, kind: DiskKind, overlay: &Path) -> Vec<String> {
    vec![
        "create".into(),
        "-q".into(),
        "-f".into(),
        "qcow2".into(),
        "-F".into(),
        kind.as_str().into(),
        "-b".into(),
        base.to_string_lossy().into_owned(),
        overlay.to_string_lossy().into_owned(),
    ]
}

/// Make `overlay`, a copy-on-write layer over `base`.
pub fn make_overlay(base: &Path, kind: DiskKind, overlay: &Path) -> Result<(), Error> {
    let made = run_tool(
        Command::new("qemu-img").args(overlay_args(base, kind, overlay)),
        "qemu-img",
        "make a VM's copy-on-write root disk (install qemu-utils)",
    );
    if let Err(e) = made {
        let _ = fs::remove_file(overlay);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_is_told_from_raw_and_junk_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = dir.path().join("a.qcow2");
        let mut bytes = b"QFI\xfb".to_vec();
        bytes.resize(512, 0);
        fs::write(&q, &bytes).expect("write");
        assert_eq!(disk_kind(&q).expect("kind"), DiskKind::Qcow2);
        let raw = dir.path().join("a.img");
        fs::write(&raw, vec![0u8; 2 * 1024 * 1024]).expect("write");
        assert_eq!(disk_kind(&raw).expect("kind"), DiskKind::Raw);
        let tiny = dir.path().join("tiny");
        fs::write(&tiny, b"not a disk").expect("write");
        let err = disk_kind(&tiny).expect_err("tiny");
        assert!(err.to_string().contains("smaller than 1 MiB"), "{err}");
        let err = disk_kind(dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(disk_kind(&dir.path().join("gone")).is_err());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12 << 20), "12.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn an_image_disk_is_built_once_and_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("img/abc/root");
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(root.join("etc/hostname"), b"guest\n").expect("write");
        let info = ImageInfo {
            name: "t".into(),
            hash: "abc".into(),
            root: root.clone(),
            built_at: 0,
            recipe: Some(crate::Recipe::parse("name = \"t\"\n").expect("recipe")),
            source: crate::ImageSource::Recipe,
            config: None,
            blobs: Vec::new(),
            size: None,
        };
        let disk = ensure_image_disk(&info, &crate::NoProgress).expect("built");
        assert_eq!(disk, dir.path().join("img/abc/disk.ext4"));
        assert_eq!(disk_kind(&disk).expect("kind"), DiskKind::Raw);
        use std::os::unix::fs::MetadataExt;
        let inode = fs::metadata(&disk).expect("meta").ino();
        ensure_image_disk(&info, &crate::NoProgress).expect("found");
        assert_eq!(fs::metadata(&disk).expect("meta").ino(), inode);
        let left: Vec<_> = fs::read_dir(dir.path().join("img/abc"))
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "root and disk.ext4 only: {left:?}");
    }

    #[test]
    fn the_overlay_names_its_base_and_its_format() {
        let args = overlay_args(
            Path::new("/cache/images/dev/abc/disk.ext4"),
            DiskKind::Raw,
            Path::new("/state/vms/dev/root.qcow2"),
        );
        assert_eq!(
            args.join(" "),
            "create -q -f qcow2 -F raw -b /cache/images/dev/abc/disk.ext4 /state/vms/dev/root.qcow2"
        );
    }

    #[test]
    fn an_overlay_over_a_missing_base_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let overlay = dir.path().join("root.qcow2");
        let err = make_overlay(&dir.path().join("gone.ext4"), DiskKind::Raw, &overlay)
            .expect_err("no base");
        assert!(err.to_string().contains("qemu-img failed"), "{err}");
        assert!(!overlay.exists());
        let base = dir.path().join("base.img");
        fs::write(&base, vec![0u8; 4 * 1024 * 1024]).expect("write");
        make_overlay(&base, DiskKind::Raw, &overlay).expect("overlay");
        assert_eq!(disk_kind(&overlay).expect("kind"), DiskKind::Qcow2);
    }
}
