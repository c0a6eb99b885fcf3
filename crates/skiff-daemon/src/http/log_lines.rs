//! `logs -t` and `logs --since`: the console log as whole lines, each with
//! the time the daemon first saw it ([`skiff_vmm::console::Stamps`]),
//! kept when at or after `since`, begun with its RFC 3339 time when asked.

use skiff_vmm::console::{timed_lines, Stamps};

/// A line longer than this is passed on without waiting for its newline
/// (a guest that never ends a line cannot make the daemon hold its log).
const LINE_MAX: usize = 64 * 1024;

pub struct LineFilter {
    pending: Vec<u8>,
    /// The log offset of `pending`'s first byte.
    pending_start: u64,
    timestamps: bool,
    since_ms: Option<u64>,
}

/// `ms` (Unix milliseconds) as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

impl LineFilter {
    pub fn new(start: u64, timestamps: bool, since_secs: Option<u64>) -> LineFilter {
        LineFilter {
            pending: Vec::new(),
            pending_start: start,
            timestamps,
            since_ms: since_secs.map(|s| s.saturating_mul(1000)),
        }
    }

    /// The log was cut back and is read again from `start`.
    pub fn restart(&mut self, start: u64) {
        self.pending.clear();
        self.pending_start = start;
    }

    fn emit(&self, out: &mut Vec<u8>, ms: u64, line: &[u8]) {
        if self.since_ms.is_some_and(|since| ms < since) {
            return;
        }
        if self.timestamps {
            out.extend_from_slice(rfc3339(ms).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(line);
    }

    /// The whole lines `bytes` completes, filtered and stamped.
    pub fn feed(&mut self, bytes: &[u8], stamps: &Stamps, now_ms: u64) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let (lines, rest) = timed_lines(&self.pending, self.pending_start, stamps, now_ms);
        let mut out = Vec::new();
        for (ms, line) in lines {
            self.emit(&mut out, ms, line);
        }
        let used = self.pending.len() - rest;
        self.pending.drain(..used);
        self.pending_start += used as u64;
        if self.pending.len() > LINE_MAX {
            out.extend(self.flush(stamps, now_ms));
        }
        out
    }

    /// The unfinished last line, ended with a newline (at the end of a
    /// log read without following, or when it grew too long).
    pub fn flush(&mut self, stamps: &Stamps, now_ms: u64) -> Vec<u8> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let end = self.pending_start + self.pending.len() as u64;
        let ms = stamps.time_of(end).unwrap_or(now_ms);
        let mut line = std::mem::take(&mut self.pending);
        line.push(b'\n');
        self.pending_start = end;
        let mut out = Vec::new();
        self.emit(&mut out, ms, &line);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamps() -> Stamps {
        Stamps {
            notes: vec![(4, 1_000), (8, 61_000)],
        }
    }

    #[test]
    fn lines_are_stamped_filtered_and_never_split() {
        let mut f = LineFilter::new(0, true, None);
        assert_eq!(
            f.feed(b"one\ntw", &stamps(), 99_000),
            b"1970-01-01T00:00:01Z one\n"
        );
        assert_eq!(
            f.feed(b"o\n", &stamps(), 99_000),
            b"1970-01-01T00:01:01Z two\n"
        );
        assert_eq!(f.feed(b"end", &stamps(), 99_000), b"");
        assert_eq!(f.flush(&stamps(), 99_000), b"1970-01-01T00:01:39Z end\n");
        // --since 60 s: the first line is older.
        let mut f = LineFilter::new(0, false, Some(60));
        assert_eq!(f.feed(b"one\ntwo\n", &stamps(), 99_000), b"two\n");
    }

    #[test]
    fn a_line_without_end_is_passed_on_at_its_bound() {
        let mut f = LineFilter::new(0, false, None);
        let out = f.feed(&vec![b'x'; LINE_MAX + 1], &Stamps::default(), 5);
        assert_eq!(out.len(), LINE_MAX + 2);
        assert_eq!(f.feed(b"y\n", &Stamps::default(), 5), b"y\n");
    }

    #[test]
    fn milliseconds_are_shown_when_there_are_some() {
        assert_eq!(rfc3339(1_764_638_075_123), "2025-12-02T01:14:35.123Z");
    }
}
