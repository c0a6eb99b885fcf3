//! ext4 drive images (config, secrets, data volumes), made with mkfs.ext4
//! so that no root privileges or loop mounts are needed.

use crate::tool::run_tool;
use crate::Error;
use std::path::Path;
use std::process::Command;

/// Make an ext4 image of `size_mib` at `out`, labelled `label`, holding a
/// copy of `contents` if given. Small read-only drives skip the journal.
pub fn make_ext4(
    label: &str,
    contents: Option<&Path>,
    out: &Path,
    size_mib: u32,
    journal: bool,
) -> Result<(), Error> {
    if label.is_empty() || label.len() > 16 {
        return Err(Error::Fetch {
            what: format!("ext4 label {label:?} must be 1 to 16 bytes"),
        });
    }
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-L", label, "-E", "root_owner=0:0"]);
    if !journal {
        cmd.args(["-O", "^has_journal"]);
    }
    if let Some(dir) = contents {
        cmd.arg("-d").arg(dir);
    }
    cmd.arg(out).arg(format!("{size_mib}M"));
    if let Err(e) = run_tool(
        &mut cmd,
        "mkfs.ext4",
        "make a drive image (install e2fsprogs)",
    ) {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_gets_its_label_and_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content = dir.path().join("c");
        std::fs::create_dir(&content).expect("mkdir");
        std::fs::write(content.join("meta.json"), b"{}").expect("write");
        let img = dir.path().join("c.ext4");
        make_ext4("skiff-config", Some(&content), &img, 4, false).expect("mkfs");
        let head = std::fs::read(&img).expect("read");
        assert_eq!(
            skiff_proto::guest::ext4_label(&head).as_deref(),
            Some("skiff-config")
        );
        let listing = Command::new("debugfs")
            .arg("-R")
            .arg("ls -l /")
            .arg(&img)
            .output()
            .expect("debugfs");
        assert!(String::from_utf8_lossy(&listing.stdout).contains("meta.json"));
    }

    #[test]
    fn bad_labels_and_non_ext4_bytes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(make_ext4(
            "a-label-that-is-too-long",
            None,
            &dir.path().join("x"),
            4,
            false
        )
        .is_err());
        assert_eq!(skiff_proto::guest::ext4_label(&[0u8; 4096]), None);
        assert_eq!(skiff_proto::guest::ext4_label(&[0u8; 10]), None);
    }
}
