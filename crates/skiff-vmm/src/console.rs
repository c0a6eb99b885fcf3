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

/// The times of a console log: QEMU writes the file and records no time,
/// so the daemon notes, as it watches, when the log grew to which size
/// (`console.times`, a line `SIZE UNIX_MS` per growth). A line's time is
/// then the first note at or past its end: when the daemon first saw it,
/// within one watch interval. Lines written while no daemon watched get
/// the time of the next note.
pub fn times_path(log: &Path) -> std::path::PathBuf {
    log.with_extension("times")
}

/// Now, in Unix milliseconds (0 if the clock is before 1970): the unit of
/// the notes, and of the times `logs -t` shows.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The notes file is thinned (every other note dropped) past this size,
/// so a guest that trickles output for months cannot grow it for ever.
const TIMES_MAX: u64 = 256 * 1024;

/// Note that `log` is `size` bytes long at `now_ms`, if it grew since
/// `last` (the size last noted, kept by the watcher). Returns the size.
pub fn note_growth(log: &Path, last: u64, now_ms: u64) -> u64 {
    let Ok(size) = std::fs::metadata(log).map(|m| m.len()) else {
        return last;
    };
    if size == last {
        return last;
    }
    let times = times_path(log);
    if size < last {
        // Trimmed: the offsets start again.
        let _ = std::fs::remove_file(&times);
    }
    if std::fs::metadata(&times).is_ok_and(|m| m.len() > TIMES_MAX) {
        let kept: String = Stamps::load(&times)
            .notes
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, (s, t))| format!("{s} {t}\n"))
            .collect();
        let _ = std::fs::write(&times, kept);
    }
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&times)
    {
        let _ = writeln!(f, "{size} {now_ms}");
    }
    size
}

/// The notes of a console log, in order of size.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stamps {
    /// (size, unix ms), sizes increasing.
    pub notes: Vec<(u64, u64)>,
}

impl Stamps {
    /// Read the notes; lines that do not parse, or that go back, are
    /// skipped (the file is the daemon's own, but a crash may cut one).
    pub fn load(times: &Path) -> Stamps {
        let text = std::fs::read_to_string(times).unwrap_or_default();
        let mut notes: Vec<(u64, u64)> = Vec::new();
        for line in text.lines() {
            let mut parts = line.split(' ');
            let (Some(Ok(size)), Some(Ok(ms))) = (
                parts.next().map(str::parse::<u64>),
                parts.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            if notes.last().is_none_or(|(s, _)| size > *s) {
                notes.push((size, ms));
            }
        }
        Stamps { notes }
    }

    /// When the byte before `end` was first seen; None if no note covers it
    /// yet (it was written since the last one: "now").
    pub fn time_of(&self, end: u64) -> Option<u64> {
        let i = self.notes.partition_point(|(size, _)| *size < end);
        self.notes.get(i).map(|(_, ms)| *ms)
    }
}

/// Split `bytes` (read from offset `start` of the log) into whole lines,
/// each with its time (`now_ms` when no note covers it yet); the bytes of
/// an unfinished last line are left (their count is returned).
pub fn timed_lines<'a>(
    bytes: &'a [u8],
    start: u64,
    stamps: &Stamps,
    now_ms: u64,
) -> (Vec<(u64, &'a [u8])>, usize) {
    let mut lines = Vec::new();
    let mut from = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            let end = start + i as u64 + 1;
            lines.push((stamps.time_of(end).unwrap_or(now_ms), &bytes[from..=i]));
            from = i + 1;
        }
    }
    (lines, bytes.len() - from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_get_the_time_their_end_was_first_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        std::fs::write(&log, "one\n").expect("write");
        let last = note_growth(&log, 0, 1_000);
        assert_eq!(last, 4);
        assert_eq!(note_growth(&log, last, 1_500), 4, "no growth, no note");
        std::fs::write(&log, "one\ntwo\nthr").expect("write");
        let last = note_growth(&log, last, 2_000);
        let stamps = Stamps::load(&times_path(&log));
        assert_eq!(stamps.notes, [(4, 1_000), (11, 2_000)]);
        let bytes = std::fs::read(&log).expect("read");
        let (lines, rest) = timed_lines(&bytes, 0, &stamps, 9_999);
        assert_eq!(lines, [(1_000, &b"one\n"[..]), (2_000, &b"two\n"[..])]);
        assert_eq!(rest, 3, "the unfinished line waits");
        // From an offset, and past the last note: now.
        std::fs::write(&log, "one\ntwo\nthree\n").expect("write");
        let bytes = std::fs::read(&log).expect("read");
        let (lines, _) = timed_lines(&bytes[8..], 8, &stamps, 9_999);
        assert_eq!(lines, [(9_999, &b"three\n"[..])]);
        // Trimmed (shorter): the notes start again.
        std::fs::write(&log, "x\n").expect("write");
        note_growth(&log, last, 3_000);
        assert_eq!(Stamps::load(&times_path(&log)).notes, [(2, 3_000)]);
    }

    #[test]
    fn bad_or_backward_notes_are_skipped_and_the_file_is_thinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let times = dir.path().join("console.times");
        std::fs::write(&times, "10 1\ngarbage\n5 2\n20 x\n30 3\n40").expect("write");
        assert_eq!(Stamps::load(&times).notes, [(10, 1), (30, 3)]);
        let log = dir.path().join("console.log");
        let big: String = (1..40_000u64).map(|i| format!("{i} {i}\n")).collect();
        std::fs::write(&times, big).expect("write");
        std::fs::write(&log, vec![b'a'; 50_000]).expect("write");
        note_growth(&log, 1, 7);
        let after = Stamps::load(&times);
        assert!(std::fs::metadata(&times).expect("times").len() < TIMES_MAX);
        assert_eq!(after.notes.last(), Some(&(50_000, 7)));
    }

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
