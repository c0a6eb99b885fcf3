//! Sizes ("512M", "2G", 512) and durations ("5s", "250ms", "1m").

/// Why a size or a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a size; write a number of MiB or a string like \"512M\" or \"2G\"")]
    NotASize(String),
    #[error("{0:?} is too large a size")]
    SizeTooLarge(String),
    #[error("{text:?} has an unknown unit {unit:?}; use K, M, G or T")]
    UnknownSizeUnit { text: String, unit: String },
    #[error("{0:?} is not a whole number of MiB")]
    NotWholeMib(String),
    #[error("{0:?} is not a duration; write it like \"500ms\", \"5s\" or \"2m\"")]
    NotADuration(String),
    #[error("{0:?} has no unit; write it like \"500ms\", \"5s\" or \"2m\"")]
    NoDurationUnit(String),
    #[error("{text:?} has an unknown unit {unit:?}; use ms, s, m or h")]
    UnknownDurationUnit { text: String, unit: String },
    #[error("{0:?} is too long")]
    DurationTooLong(String),
}

/// A size in MiB: an integer is MiB; a string takes a K/M/G/T suffix
/// (optionally "iB" or "B", powers of 1024). Sizes must be whole MiB.
pub fn parse_size_mib(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num
        .parse()
        .map_err(|_| UnitError::NotASize(text.to_owned()))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.trim_end_matches("IB").trim_end_matches('B');
    let factor: u64 = match unit {
        "K" => 1,
        "" | "M" => 1024,
        "G" => 1024 * 1024,
        "T" => 1024 * 1024 * 1024,
        other => {
            return Err(UnitError::UnknownSizeUnit {
                text: text.to_owned(),
                unit: other.to_owned(),
            })
        }
    };
    let kib = n
        .checked_mul(factor)
        .ok_or_else(|| UnitError::SizeTooLarge(text.to_owned()))?;
    if kib % 1024 != 0 {
        return Err(UnitError::NotWholeMib(text.to_owned()));
    }
    Ok(kib / 1024)
}

/// A duration in milliseconds from "250ms", "5s", "2m", "1h".
pub fn parse_duration_ms(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num
        .parse()
        .map_err(|_| UnitError::NotADuration(text.to_owned()))?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(UnitError::NoDurationUnit(text.to_owned())),
        other => {
            return Err(UnitError::UnknownDurationUnit {
                text: text.to_owned(),
                unit: other.to_owned(),
            })
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| UnitError::DurationTooLong(text.to_owned()))
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
        assert!(matches!(
            parse_size_mib("5X"),
            Err(UnitError::UnknownSizeUnit { .. })
        ));
        assert!(parse_size_mib("5X")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("5s"), Ok(5000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert!(parse_duration_ms("5")
            .unwrap_err()
            .to_string()
            .contains("no unit"));
        assert_eq!(
            parse_duration_ms("5d"),
            Err(UnitError::UnknownDurationUnit {
                text: "5d".into(),
                unit: "d".into()
            })
        );
    }
}
