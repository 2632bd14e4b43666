//! Exact money: an amount in one currency.
//!
//! Amounts are `rust_decimal::Decimal` and never binary floating point.
//! Adding or comparing amounts of different currencies is an error rather
//! than a silent conversion: an invoice is in one currency.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An ISO 4217 alphabetic currency code such as `EUR` or `USD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// The three-letter code.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.0).expect("constructed from ASCII letters")
    }

    /// Digits after the decimal point of the currency's minor unit, per
    /// ISO 4217 (2 for EUR and USD, 0 for JPY, 3 for BHD). Codes not listed
    /// here use 2, the most common exponent.
    pub fn minor_unit_digits(&self) -> u32 {
        match self.code() {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF"
            | "UGX" | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            "CLF" | "UYW" => 4,
            _ => 2,
        }
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() == 3 && b.iter().all(|c| c.is_ascii_uppercase()) {
            Ok(Currency([b[0], b[1], b[2]]))
        } else {
            Err(MoneyError::InvalidCurrency(s.to_string()))
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Errors of money arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not three uppercase ASCII letters.
    #[error("'{0}' is not an ISO 4217 currency code: use three uppercase letters such as EUR")]
    InvalidCurrency(String),
    /// Two amounts of different currencies were combined.
    #[error("cannot combine {0} with {1}: amounts must be in one currency")]
    CurrencyMismatch(Currency, Currency),
    /// The result does not fit a decimal.
    #[error("amount overflow")]
    Overflow,
}

/// An exact amount of money in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Money {
    /// The amount, unrounded unless a rounding rule was applied.
    pub amount: Decimal,
    /// The currency of the amount.
    pub currency: Currency,
}

impl Money {
    /// An amount in a currency.
    pub fn new(amount: Decimal, currency: Currency) -> Money {
        Money { amount, currency }
    }

    /// Zero in a currency.
    pub fn zero(currency: Currency) -> Money {
        Money::new(Decimal::ZERO, currency)
    }

    /// The sum of two amounts of the same currency.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }
}

/// The rounding rule of invoice amounts: half away from zero ("commercial
/// rounding"), to the currency's minor unit. See docs/rounding.md for where
/// it applies; everywhere else amounts keep full precision.
pub const ROUNDING_RULE: &str = "half away from zero, to the currency's minor unit";

/// An exact amount as people read it outside an invoice (summaries, the
/// demo, the dashboard): rounded to the minor unit of `currency` with
/// [`ROUNDING_RULE`]. Usage no plan priced has no currency and is shown
/// as it is.
pub fn rounded_amount(amount: Decimal, currency: &str) -> Decimal {
    match currency.parse::<Currency>() {
        Ok(c) => Money::new(amount, c).round_to_minor_unit().amount,
        Err(_) => amount,
    }
}

impl Money {
    /// The amount rounded to the currency's minor unit with
    /// [`ROUNDING_RULE`]: 0.005 EUR → 0.01, −0.005 EUR → −0.01, 0.5 JPY → 1.
    pub fn round_to_minor_unit(self) -> Money {
        let digits = self.currency.minor_unit_digits();
        let mut amount = self
            .amount
            .round_dp_with_strategy(digits, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        // Always show the minor unit's digits (12.3 → 12.30): exact, as the
        // value has at most `digits` places now.
        amount.rescale(digits);
        Money::new(amount, self.currency)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amounts_round_by_their_currency_or_stay_as_they_are() {
        let d = |t: &str| t.parse::<Decimal>().unwrap();
        assert_eq!(rounded_amount(d("3811.342810584"), "EUR"), d("3811.34"));
        assert_eq!(rounded_amount(d("0.5"), "JPY"), d("1"));
        assert_eq!(rounded_amount(d("0.125"), ""), d("0.125"));
    }

    #[test]
    fn currency_codes_are_validated() {
        assert_eq!("EUR".parse::<Currency>().unwrap().code(), "EUR");
        assert!("eur".parse::<Currency>().is_err());
        assert!("EURO".parse::<Currency>().is_err());
    }

    #[test]
    fn mixing_currencies_is_an_error() {
        let eur: Currency = "EUR".parse().unwrap();
        let usd: Currency = "USD".parse().unwrap();
        let err = Money::zero(eur).checked_add(Money::zero(usd)).unwrap_err();
        assert_eq!(err, MoneyError::CurrencyMismatch(eur, usd));
    }

    fn m(amount: &str, currency: &str) -> Money {
        Money::new(amount.parse().unwrap(), currency.parse().unwrap())
    }

    #[test]
    fn rounding_edges() {
        let r = |a: &str, c: &str| m(a, c).round_to_minor_unit().amount.to_string();
        assert_eq!(r("0.005", "EUR"), "0.01");
        assert_eq!(r("0.004999999", "EUR"), "0.00");
        assert_eq!(r("-0.005", "EUR"), "-0.01");
        assert_eq!(r("2.675", "USD"), "2.68");
        assert_eq!(
            r("0.125", "EUR"),
            "0.13",
            "half away from zero, not to even"
        );
        assert_eq!(r("0.5", "JPY"), "1");
        assert_eq!(r("1.0005", "BHD"), "1.001");
        assert_eq!(r("12.3", "EUR"), "12.30", "always the minor unit's digits");
    }

    proptest! {
        #[test]
        fn rounding_moves_at_most_half_a_minor_unit(units in -1_000_000_000i64..1_000_000_000, scale in 0u32..10) {
            let money = Money::new(Decimal::new(units, scale), "EUR".parse().unwrap());
            let rounded = money.round_to_minor_unit();
            prop_assert!((rounded.amount - money.amount).abs() <= Decimal::new(5, 3));
            prop_assert!(rounded.amount.scale() == 2);
        }

        #[test]
        fn addition_is_exact(a in -1_000_000_000i64..1_000_000_000, b in -1_000_000_000i64..1_000_000_000) {
            let eur: Currency = "EUR".parse().unwrap();
            let x = Money::new(Decimal::new(a, 4), eur);
            let y = Money::new(Decimal::new(b, 4), eur);
            let s = x.checked_add(y).unwrap();
            prop_assert_eq!(s.amount, Decimal::new(a + b, 4));
        }
    }
}
