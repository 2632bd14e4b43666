//! Exact parsing of a measured volume.
//!
//! Volumes arrive as JSON numbers or decimal strings. Going through `f64`
//! would turn `0.1` into `0.1000000000000000055…`, so the text of the number
//! is parsed straight into a decimal.

use rust_decimal::Decimal;

/// Largest number of fractional digits a stored volume may have. The raw
/// store keeps volumes as Parquet `DECIMAL(38, 18)`, so this bound is what
/// makes storage exact rather than rounded.
pub const MAX_VOLUME_SCALE: u32 = 18;

/// Volumes must stay below 10^20 in magnitude: with 18 fractional digits that
/// is the 38-digit limit of the stored decimal.
pub const MAX_VOLUME_INTEGER_DIGITS: u32 = 20;

/// Why a volume text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// The text is not a decimal number at all.
    #[error("'{0}' is not a decimal number")]
    NotANumber(String),
    /// `NaN` or an infinity.
    #[error("'{0}' is not a finite number")]
    NotFinite(String),
    /// Too many fractional digits to store exactly.
    #[error("'{0}' has more than {MAX_VOLUME_SCALE} decimal places")]
    TooPrecise(String),
    /// Too large to store exactly.
    #[error("'{0}' is out of range: its magnitude must be below 1e{MAX_VOLUME_INTEGER_DIGITS}")]
    OutOfRange(String),
}

/// Parses the text of a JSON number or of a decimal string into an exact
/// decimal. Accepts plain (`12.50`) and scientific (`1.5e3`) notation.
pub fn parse_volume_text(text: &str) -> Result<Decimal, VolumeError> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if unsigned == "nan" || unsigned == "inf" || unsigned == "infinity" {
        return Err(VolumeError::NotFinite(text.to_string()));
    }
    if t.is_empty()
        || !t
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
    {
        return Err(VolumeError::NotANumber(text.to_string()));
    }
    let parsed = if t.contains(['e', 'E']) {
        Decimal::from_scientific(t)
    } else {
        Decimal::from_str_exact(t)
    };
    let value = match parsed {
        Ok(v) => v,
        Err(rust_decimal::Error::Underflow) => {
            return Err(VolumeError::TooPrecise(text.to_string()));
        }
        Err(rust_decimal::Error::ExceedsMaximumPossibleValue)
        | Err(rust_decimal::Error::LessThanMinimumPossibleValue) => {
            return Err(VolumeError::OutOfRange(text.to_string()));
        }
        Err(_) => return Err(VolumeError::NotANumber(text.to_string())),
    };
    if value.scale() > MAX_VOLUME_SCALE {
        // Trailing zeros beyond the limit lose nothing; other digits would.
        let normalized = value.normalize();
        if normalized.scale() > MAX_VOLUME_SCALE {
            return Err(VolumeError::TooPrecise(text.to_string()));
        }
        return check_range(normalized, text);
    }
    check_range(value, text)
}

fn check_range(value: Decimal, text: &str) -> Result<Decimal, VolumeError> {
    let limit = Decimal::from_i128_with_scale(10i128.pow(MAX_VOLUME_INTEGER_DIGITS), 0);
    if value.abs() >= limit {
        return Err(VolumeError::OutOfRange(text.to_string()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    #[test]
    fn keeps_decimal_text_exact() {
        assert_eq!(parse_volume_text("0.1").unwrap().to_string(), "0.1");
        assert_eq!(parse_volume_text("2.50").unwrap().to_string(), "2.50");
        assert_eq!(parse_volume_text("-3").unwrap().to_string(), "-3");
        assert_eq!(parse_volume_text("1.5e3").unwrap(), Decimal::from(1500));
        assert_eq!(
            parse_volume_text("1E-3").unwrap(),
            Decimal::from_str("0.001").unwrap()
        );
    }

    #[test]
    fn refuses_what_cannot_be_kept_exact() {
        assert!(matches!(
            parse_volume_text("NaN"),
            Err(VolumeError::NotFinite(_))
        ));
        assert!(matches!(
            parse_volume_text("-Infinity"),
            Err(VolumeError::NotFinite(_))
        ));
        assert!(matches!(
            parse_volume_text("ten"),
            Err(VolumeError::NotANumber(_))
        ));
        assert!(matches!(
            parse_volume_text(""),
            Err(VolumeError::NotANumber(_))
        ));
        assert!(matches!(
            parse_volume_text("1.2.3"),
            Err(VolumeError::NotANumber(_))
        ));
        assert!(matches!(
            parse_volume_text("0.1234567890123456789"),
            Err(VolumeError::TooPrecise(_))
        ));
        assert!(matches!(
            parse_volume_text("100000000000000000000"),
            Err(VolumeError::OutOfRange(_))
        ));
        assert!(parse_volume_text("1e400").is_err());
    }

    #[test]
    fn edges_of_the_stored_range() {
        assert!(parse_volume_text("99999999999999999999").is_ok());
        assert!(parse_volume_text("0.000000000000000001").is_ok());
        // Trailing zeros past 18 places lose nothing, so they are accepted.
        assert_eq!(
            parse_volume_text("1.0000000000000000000000").unwrap(),
            Decimal::ONE
        );
    }

    proptest! {
        #[test]
        fn any_decimal_within_limits_round_trips(m in -99_999_999_999_999_999i64..99_999_999_999_999_999i64, s in 0u32..=18) {
            let d = Decimal::new(m, s);
            let parsed = parse_volume_text(&d.to_string()).unwrap();
            prop_assert_eq!(parsed, d);
            prop_assert_eq!(parsed.to_string(), d.to_string());
        }
    }
}
