//! Progress while the daemon boots a VM (`start`, `restart`, `run -d`):
//! on a terminal, a spinner with the time spent and the last line of the
//! guest's console, so a slow boot (a systemd guest takes half a minute
//! under emulation) is seen to move. Pipes and logs get nothing extra.

use crate::client::Client;
use http_body_util::BodyExt;
use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

/// How often the console's last line is read.
const POLL: Duration = Duration::from_millis(700);
/// The console's part of the spinner line, in characters.
const SHOWN: usize = 60;

/// The console line as the spinner shows it: the guest wrote it, so
/// control characters (escape sequences for the user's terminal) become
/// spaces, runs of blanks one, and it is cut to `SHOWN` characters.
pub fn shown_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let last = text
        .split(['\n', '\r'])
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    // Colour and cursor sequences (ESC [ ... final byte) go whole; any
    // other control character becomes a space.
    let mut cleaned = String::with_capacity(last.len());
    let mut chars = last.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for f in chars.by_ref() {
                if ('@'..='~').contains(&f) {
                    break;
                }
            }
        } else if c.is_control() {
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    let joined = words.join(" ");
    if joined.chars().count() > SHOWN {
        let cut: String = joined.chars().take(SHOWN - 1).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

async fn last_console_line(c: &Client, name: &str) -> Option<String> {
    let body = c
        .stream(&format!("/v1/vms/{name}/logs?follow=false&tail=1"))
        .await
        .ok()?;
    let bytes = body.collect().await.ok()?.to_bytes();
    Some(shown_line(&bytes))
}

/// Run `boot` (a start request for `name`) with a spinner on stderr when
/// it is a terminal and `quiet` is not set.
pub async fn while_booting<F: Future>(c: &Client, name: &str, quiet: bool, boot: F) -> F::Output {
    if quiet || !std::io::stderr().is_terminal() {
        return boot.await;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} booting {prefix} ({elapsed}) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_prefix(name.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    tokio::pin!(boot);
    let mut poll = tokio::time::interval(POLL);
    let out = loop {
        tokio::select! {
            out = &mut boot => break out,
            _ = poll.tick() => {
                if let Some(line) = last_console_line(c, name).await {
                    bar.set_message(line);
                }
            }
        }
    };
    bar.finish_and_clear();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_line_loses_its_escapes_and_is_cut() {
        assert_eq!(
            shown_line(b"[  OK  ] Started \x1b[1;32mjournald\x1b[0m.\r\n\n"),
            "[ OK ] Started journald."
        );
        assert_eq!(shown_line(b"first\nsecond\n   \n"), "second");
        assert_eq!(shown_line(b"a\x07b\x1b]0;title\x07c"), "a b ]0;title c");
        assert_eq!(shown_line(b""), "");
        let long = "x".repeat(500);
        let shown = shown_line(long.as_bytes());
        assert_eq!(shown.chars().count(), SHOWN);
        assert!(shown.ends_with('…'));
        // Not UTF-8 at all: replaced, never a panic.
        assert!(!shown_line(&[0xff, 0xfe, b'a']).contains('\u{1b}'));
    }
}
