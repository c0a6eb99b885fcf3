//! Running a host tool (apt-get, dpkg-deb, mkfs.ext4, qemu-img) with
//! errors that say which tool, what it was for, and what it printed.

use crate::Error;
use std::process::Command;

/// Run a host tool; on failure, say which tool, what it was for, and what it printed.
pub(crate) fn run_tool(
    cmd: &mut Command,
    tool: &'static str,
    purpose: &'static str,
) -> Result<String, Error> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::ToolMissing { tool, purpose }
        } else {
            Error::ToolFailed {
                tool,
                purpose,
                output: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(Error::ToolFailed {
            tool,
            purpose,
            output: text
                .trim()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
