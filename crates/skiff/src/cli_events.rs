//! `skiff events`: what happens to VMs, streamed by the daemon.

use crate::client::Client;
use anyhow::{Context, Result};
use http_body_util::BodyExt;
use std::io::Write;

/// `skiff events`: the daemon's event stream, a line per event.
pub async fn events(c: &Client, vm: Option<&str>, action: Option<&str>, json: bool) -> Result<i32> {
    // Percent-encoded: a value is data, never more of the query.
    let encode = |v: &str| -> String {
        v.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let mut query = Vec::new();
    if let Some(vm) = vm {
        query.push(format!("vm={}", encode(vm)));
    }
    if let Some(a) = action {
        query.push(format!("action={}", encode(a)));
    }
    let path = format!("/v1/events?{}", query.join("&"));
    let mut body = c.stream(&path).await?;
    let mut pending = Vec::new();
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("the event stream broke")?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = if json {
                String::from_utf8_lossy(&line).trim_end().to_owned()
            } else {
                match serde_json::from_slice::<skiff_api::VmEvent>(&line) {
                    Ok(e) => event_line(&e),
                    Err(_) => continue,
                }
            };
            if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                return Ok(0);
            }
        }
    }
    Ok(0)
}

/// `2026-12-01T18:05:03Z  web  start  starting  NOTE`.
fn event_line(e: &skiff_api::VmEvent) -> String {
    let state = e.state.map_or("-", |s| s.as_str());
    let line = format!(
        "{}  {:<20} {:<12} {:<9}",
        utc(e.time),
        e.vm,
        e.action,
        state
    );
    if e.note.is_empty() {
        line.trim_end().to_owned()
    } else {
        format!("{line} {}", e.note)
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time (the civil-from-days
/// conversion of the proleptic Gregorian calendar).
pub fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn times_read_as_rfc3339() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_151_903), "2026-12-01T19:05:03Z");
    }
}
