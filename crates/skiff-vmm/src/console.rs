//! The guest's serial console, which QEMU appends to a file: its last lines
//! for error reports, and a size bound so that a guest printing for ever
//! cannot fill the host's disk (or a tmpfs).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How many console lines an error report shows.
const TAIL_LINES: usize = 40;
/// Longest console line shown; a guest printing without newlines cannot
/// make a report grow.
const TAIL_LINE_MAX: usize = 512;
/// The console log is cut back to its tail when it grows past this.
pub const CONSOLE_LOG_MAX: u64 = 8 * 1024 * 1024;
const CONSOLE_LOG_KEEP: u64 = 1024 * 1024;

/// The last lines of a console log, indented for an error message, or a
/// note that the guest printed nothing.
pub fn tail(path: &Path) -> String {
    let text = read_end(path, 64 * 1024);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.chars().take(TAIL_LINE_MAX).collect())
        .collect();
    if lines.is_empty() {
        return "  (the guest printed nothing)".into();
    }
    lines[lines.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// At most the last `max` bytes of a file, as text (lossy).
pub fn read_end(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Keep a console log bounded: past [`CONSOLE_LOG_MAX`], its last MiB goes
/// to `console.log.1` and the log starts again. QEMU appends (O_APPEND), so
/// truncating under it is safe.
pub fn trim(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.len() <= CONSOLE_LOG_MAX {
        return;
    }
    let kept = read_end(path, CONSOLE_LOG_KEEP);
    let _ = std::fs::write(path.with_extension("log.1"), kept);
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = f.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_bounds_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        assert_eq!(tail(&log), "  (the guest printed nothing)");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("line {i}\r\n\n"));
        }
        text.push_str(&"x".repeat(5000));
        std::fs::write(&log, text).expect("write");
        let t = tail(&log);
        assert_eq!(t.lines().count(), TAIL_LINES);
        assert!(t.starts_with("  | line 61\n"), "{t}");
        assert!(t.ends_with(&format!("  | {}", "x".repeat(TAIL_LINE_MAX))));
    }

    #[test]
    fn trim_cuts_a_huge_log_back_to_its_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let mut big = vec![b'a'; CONSOLE_LOG_MAX as usize];
        big.extend_from_slice(b"the end\n");
        std::fs::write(&log, &big).expect("write");
        trim(&log);
        assert_eq!(std::fs::metadata(&log).expect("log").len(), 0);
        let kept = std::fs::read(dir.path().join("console.log.1")).expect("kept");
        assert_eq!(kept.len() as u64, CONSOLE_LOG_KEEP);
        assert!(kept.ends_with(b"the end\n"));
    }
}
