//! Sizes ("512M", "2G", 512) and durations ("5s", "250ms", "1m").

/// A size in MiB: an integer is MiB; a string takes a K/M/G/T suffix
/// (optionally "iB" or "B", powers of 1024). Sizes must be whole MiB.
pub fn parse_size_mib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| {
        format!("{text:?} is not a size; write a number of MiB or a string like \"512M\" or \"2G\"")
    })?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.trim_end_matches("IB").trim_end_matches('B');
    let kib = match unit {
        "K" => n,
        "" | "M" => n.checked_mul(1024).ok_or("size too large")?,
        "G" => n.checked_mul(1024 * 1024).ok_or("size too large")?,
        "T" => n.checked_mul(1024 * 1024 * 1024).ok_or("size too large")?,
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?}; use K, M, G or T"
            ))
        }
    };
    if kib % 1024 != 0 {
        return Err(format!("{text:?} is not a whole number of MiB"));
    }
    Ok(kib / 1024)
}

/// A duration in milliseconds from "250ms", "5s", "2m", "1h".
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| {
        format!("{text:?} is not a duration; write it like \"500ms\", \"5s\" or \"2m\"")
    })?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "{text:?} has no unit; write it like \"500ms\", \"5s\" or \"2m\""
            ))
        }
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?}; use ms, s, m or h"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size_mib("512"), Ok(512));
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("512MiB"), Ok(512));
        assert_eq!(parse_size_mib("2G"), Ok(2048));
        assert_eq!(parse_size_mib("2048K"), Ok(2));
        assert!(parse_size_mib("1K").is_err());
        assert!(parse_size_mib("lots").is_err());
        assert!(parse_size_mib("5X").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("5s"), Ok(5000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert!(parse_duration_ms("5").unwrap_err().contains("no unit"));
        assert!(parse_duration_ms("5d")
            .unwrap_err()
            .contains("unknown unit"));
    }
}
