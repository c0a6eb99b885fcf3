//! What `skiff mcp` keeps of a command's output: the first bytes of each
//! stream up to the call's cap, and a count of the rest, taken from the
//! commands API's event lines as they stream.

use anyhow::{bail, Result};
use base64::Engine;
use serde_json::Value;

/// One output stream of a command: its first `cap` bytes, and how many
/// came after them.
#[derive(Default)]
pub(crate) struct Kept {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Kept {
    fn push(&mut self, data: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.bytes.len()).min(data.len());
        self.bytes.extend_from_slice(&data[..room]);
        self.dropped += (data.len() - room) as u64;
    }

    fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!("\n[... {} more bytes not shown]", self.dropped));
        }
        text
    }
}

/// What a command did.
pub(crate) struct Ran {
    cap: usize,
    stdout: Kept,
    stderr: Kept,
    exit_code: i64,
    timed_out: bool,
}

impl Ran {
    pub(crate) fn new(cap: usize) -> Ran {
        Ran {
            cap,
            stdout: Kept::default(),
            stderr: Kept::default(),
            exit_code: -1,
            timed_out: false,
        }
    }

    /// One event line of the commands API.
    pub(crate) fn take_event(&mut self, line: &[u8]) -> Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let ev: Value = serde_json::from_slice(line)?;
        let data = || {
            b64.decode(ev["data"].as_str().unwrap_or(""))
                .unwrap_or_default()
        };
        match ev["type"].as_str() {
            Some("stdout") => self.stdout.push(&data(), self.cap),
            Some("stderr") => self.stderr.push(&data(), self.cap),
            Some("exit") => {
                self.exit_code = ev["exit_code"].as_i64().unwrap_or(-1);
                self.timed_out = ev["timed_out"].as_bool().unwrap_or(false);
            }
            Some("error") => {
                bail!("{}", ev["message"].as_str().unwrap_or("the command failed"))
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn report(&self) -> (String, bool) {
        let mut text = format!("exit code: {}", self.exit_code);
        if self.timed_out {
            text.push_str(" (killed at its time limit)");
        }
        text.push_str(&format!("\n--- stdout ---\n{}", self.stdout.text()));
        if !self.stderr.bytes.is_empty() || self.stderr.dropped > 0 {
            text.push_str(&format!("\n--- stderr ---\n{}", self.stderr.text()));
        }
        (text, self.exit_code != 0 || self.timed_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn output_is_capped_as_it_streams_and_says_so() {
        let mut ran = Ran::new(10);
        let event = |kind: &str, data: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD;
            json!({"type": kind, "data": b64.encode(data)}).to_string()
        };
        for chunk in [&b"0123"[..], b"456789a", b"bc"] {
            ran.take_event(event("stdout", chunk).as_bytes())
                .expect("event");
        }
        ran.take_event(event("stderr", b"short").as_bytes())
            .expect("event");
        ran.take_event(br#"{"type":"exit","exit_code":3}"#)
            .expect("event");
        assert_eq!(ran.stdout.bytes, b"0123456789", "only the cap is held");
        let (text, is_error) = ran.report();
        assert_eq!(
            text,
            "exit code: 3\n--- stdout ---\n0123456789\n[... 3 more bytes not shown]\n--- stderr ---\nshort"
        );
        assert!(is_error);
        let failed = ran.take_event(br#"{"type":"error","message":"no such VM"}"#);
        assert_eq!(format!("{:#}", failed.expect_err("error")), "no such VM");
    }
}
