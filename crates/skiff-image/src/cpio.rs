//! A writer for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Entries get fixed owners (root) and timestamps (0) so that the same inputs
//! always give the same bytes.

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// An in-memory newc archive.
#[derive(Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
}

impl CpioWriter {
    pub fn new() -> CpioWriter {
        CpioWriter {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    /// Add a directory. Paths are relative to the archive root (`bin`, not `/bin`).
    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, &[]);
    }

    /// Add a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, data);
    }

    /// Add a symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, target.as_bytes());
    }

    /// Close the archive and return its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry(TRAILER, 0, 1, &[]);
        // The kernel does not require it, but tools expect 512-byte blocks.
        let padded = self.out.len().div_ceil(512) * 512;
        self.out.resize(padded, 0);
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) {
        let path = path.trim_start_matches('/');
        let ino = if path == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let name_size = path.len() + 1; // with the terminating NUL
        let fields: [u32; 13] = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            0, // rdev major
            0, // rdev minor
            name_size as u32,
            0, // checksum (newc has none)
        ];
        self.out.extend_from_slice(MAGIC.as_bytes());
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad4();
        self.out.extend_from_slice(data);
        self.pad4();
    }

    fn pad4(&mut self) {
        let padded = self.out.len().div_ceil(4) * 4;
        self.out.resize(padded, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn archive_lists_and_extracts_with_gnu_cpio() {
        let mut w = CpioWriter::new();
        w.dir("bin", 0o755);
        w.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n");
        w.file("odd", 0o600, b"abc");
        w.symlink("bin/sh", "hello");
        let bytes = w.finish();
        assert_eq!(bytes.len() % 512, 0);

        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, &bytes).expect("write archive");
        let out_dir = dir.path().join("x");
        std::fs::create_dir(&out_dir).expect("mkdir");
        let status = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "-F"])
            .arg(&archive)
            .current_dir(&out_dir)
            .status()
            .expect("GNU cpio must be installed (scripts/setup.sh installs it)");
        assert!(status.success());
        assert_eq!(
            std::fs::read(out_dir.join("bin/hello")).expect("hello"),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(std::fs::read(out_dir.join("odd")).expect("odd"), b"abc");
        assert_eq!(
            std::fs::read_link(out_dir.join("bin/sh")).expect("link"),
            std::path::PathBuf::from("hello")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out_dir.join("odd"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn same_inputs_give_same_bytes() {
        let build = || {
            let mut w = CpioWriter::new();
            w.file("init", 0o755, b"x");
            w.finish()
        };
        assert_eq!(build(), build());
    }
}
