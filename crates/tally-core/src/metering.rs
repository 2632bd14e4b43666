//! Metering math: turning raw volumes into billable quantities, and the
//! aggregations of one group of records over one rating period.
//!
//! These are the pure halves of meter definitions; the rating engine feeds
//! them records and periods. Quantities are exact decimals; time-based
//! aggregations measure time in microseconds and report hours, dividing by
//! 3,600 once at the end (to 28 significant digits, far below any currency's
//! minor unit).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Errors of meter definitions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeteringError {
    /// A factor that is not a decimal or a fraction `a/b`.
    #[error("factor '{0}' is not a decimal or a fraction such as 1/1073741824")]
    BadFactor(String),
    /// A fraction with a zero denominator.
    #[error("factor '{0}' divides by zero")]
    ZeroDenominator(String),
    /// Arithmetic overflow.
    #[error("quantity overflow")]
    Overflow,
}

/// `quantity = raw × factor + offset`, with the factor kept as a fraction
/// so that `1/1073741824` (bytes → GiB) stays exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversion {
    /// Numerator of the factor.
    pub numerator: Decimal,
    /// Denominator of the factor (never zero).
    pub denominator: Decimal,
    /// Added after scaling.
    pub offset: Decimal,
}

impl Default for Conversion {
    fn default() -> Self {
        Conversion {
            numerator: Decimal::ONE,
            denominator: Decimal::ONE,
            offset: Decimal::ZERO,
        }
    }
}

impl Conversion {
    /// Parses a factor written as a decimal (`0.001`) or a fraction
    /// (`1/1073741824`), with an offset.
    pub fn parse(factor: &str, offset: Decimal) -> Result<Conversion, MeteringError> {
        let bad = || MeteringError::BadFactor(factor.to_string());
        let num = |s: &str| s.trim().parse::<Decimal>().map_err(|_| bad());
        let (numerator, denominator) = match factor.split_once('/') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(factor)?, Decimal::ONE),
        };
        if denominator.is_zero() {
            return Err(MeteringError::ZeroDenominator(factor.to_string()));
        }
        Ok(Conversion {
            numerator,
            denominator,
            offset,
        })
    }

    /// Converts a raw volume. Multiplies before dividing so that exact
    /// results stay exact.
    pub fn apply(&self, raw: Decimal) -> Result<Decimal, MeteringError> {
        raw.checked_mul(self.numerator)
            .and_then(|v| v.checked_div(self.denominator))
            .and_then(|v| v.checked_add(self.offset))
            .ok_or(MeteringError::Overflow)
    }
}

/// CloudKitty's `mutate`, applied after the conversion.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mutate", content = "map", rename_all = "UPPERCASE")]
pub enum Mutate {
    /// The quantity as is.
    #[default]
    None,
    /// 1 when the quantity is not zero, else 0.
    Numbool,
    /// 0 when the quantity is not zero, else 1.
    Notnumbool,
    /// Rounded down to a whole number.
    Floor,
    /// Rounded up to a whole number.
    Ceil,
    /// Looked up by its decimal text (normalized: `1.0` is `1`); no match is 0.
    Map(BTreeMap<String, Decimal>),
}

impl Mutate {
    /// Applies the mutation.
    pub fn apply(&self, q: Decimal) -> Decimal {
        match self {
            Mutate::None => q,
            Mutate::Numbool => {
                if q.is_zero() {
                    Decimal::ZERO
                } else {
                    Decimal::ONE
                }
            }
            Mutate::Notnumbool => {
                if q.is_zero() {
                    Decimal::ONE
                } else {
                    Decimal::ZERO
                }
            }
            Mutate::Floor => q.floor(),
            Mutate::Ceil => q.ceil(),
            Mutate::Map(map) => map
                .get(&q.normalize().to_string())
                .copied()
                .unwrap_or(Decimal::ZERO),
        }
    }
}

fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> Decimal {
    Decimal::new((b - a).num_microseconds().unwrap_or(i64::MAX), 6)
}

fn hours(seconds: Decimal) -> Decimal {
    seconds / Decimal::from(3600)
}

/// A rating period `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// First instant in the period.
    pub start: DateTime<Utc>,
    /// First instant after the period.
    pub end: DateTime<Utc>,
}

/// A gauge integrated over time: Σ value × hours it held, within the period.
///
/// `samples` are (time, value) of one resource in any order; `carry_in` is
/// the last value known before the period (it holds from the period's start
/// until the first sample); `ended_at` is when the resource was deleted (its
/// value is 0 from then on). Before any known value the resource does not
/// count. Samples at the same instant are ordered by value so that the
/// result does not depend on arrival order.
pub fn time_weighted(
    samples: &[(DateTime<Utc>, Decimal)],
    carry_in: Option<Decimal>,
    ended_at: Option<DateTime<Utc>>,
    period: Period,
) -> Decimal {
    let mut sorted: Vec<(DateTime<Utc>, Decimal)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t < period.end)
        .collect();
    sorted.sort();
    let end = ended_at.map_or(period.end, |e| e.clamp(period.start, period.end));
    // The value in force at the period's start: the carry-in, overridden by
    // samples before the start.
    let mut value = carry_in;
    let mut at = period.start;
    let mut total = Decimal::ZERO;
    for (t, v) in sorted {
        if t <= period.start {
            value = Some(v);
            continue;
        }
        let until = t.min(end);
        if let Some(current) = value
            && until > at
        {
            total += current * seconds_between(at, until);
        }
        at = at.max(until);
        value = Some(v);
    }
    if let Some(current) = value
        && end > at
    {
        total += current * seconds_between(at, end);
    }
    hours(total)
}

/// A lifecycle change of one resource: from `time` on it is in `state`,
/// split by `split` (a flavor, say).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StateChange {
    /// When the state began.
    pub time: DateTime<Utc>,
    /// The state (`active`, `shutoff`, `shelved_offloaded`, `deleted`, ...).
    pub state: String,
    /// The value the hours are split by (`None` when not split).
    pub split: Option<String>,
}

/// Hours a resource spent in billable states during the period, per split
/// value. `carry_in` is the last change before the period (the resource was
/// in that state when the period began); changes may come in any order.
pub fn state_duration(
    changes: &[StateChange],
    carry_in: Option<&StateChange>,
    billable: &BTreeSet<String>,
    period: Period,
) -> BTreeMap<Option<String>, Decimal> {
    let mut sorted: Vec<&StateChange> = changes.iter().filter(|c| c.time < period.end).collect();
    sorted.sort();
    let mut current: Option<&StateChange> = carry_in;
    let mut at = period.start;
    let mut seconds: BTreeMap<Option<String>, Decimal> = BTreeMap::new();
    let mut credit = |c: Option<&StateChange>, from: DateTime<Utc>, to: DateTime<Utc>| {
        if let Some(c) = c
            && to > from
            && billable.contains(&c.state)
        {
            *seconds.entry(c.split.clone()).or_default() += seconds_between(from, to);
        }
    };
    for change in sorted {
        if change.time <= period.start {
            current = Some(change);
            continue;
        }
        credit(current, at, change.time);
        at = change.time;
        current = Some(change);
    }
    credit(current, at, period.end);
    seconds.into_iter().map(|(k, s)| (k, hours(s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 1, h, m, 0).unwrap()
    }

    fn hour(h: u32) -> Period {
        Period {
            start: t(h, 0),
            end: t(h + 1, 0),
        }
    }

    #[test]
    fn conversions_are_exact_fractions() {
        let gib = Conversion::parse("1/1073741824", Decimal::ZERO).unwrap();
        assert_eq!(gib.apply(d("5368709120")).unwrap(), d("5"));
        assert_eq!(gib.apply(d("536870912")).unwrap(), d("0.5"));
        let c = Conversion::parse("0.001", d("2")).unwrap();
        assert_eq!(c.apply(d("1500")).unwrap(), d("3.5"));
        assert!(matches!(
            Conversion::parse("1/0", Decimal::ZERO),
            Err(MeteringError::ZeroDenominator(_))
        ));
        assert!(matches!(
            Conversion::parse("a/b", Decimal::ZERO),
            Err(MeteringError::BadFactor(_))
        ));
    }

    #[test]
    fn mutations_match_cloudkitty() {
        assert_eq!(Mutate::Numbool.apply(d("5")), Decimal::ONE);
        assert_eq!(Mutate::Numbool.apply(d("0")), Decimal::ZERO);
        assert_eq!(Mutate::Notnumbool.apply(d("0")), Decimal::ONE);
        assert_eq!(Mutate::Notnumbool.apply(d("-2")), Decimal::ZERO);
        assert_eq!(Mutate::Floor.apply(d("2.7")), d("2"));
        assert_eq!(Mutate::Ceil.apply(d("2.1")), d("3"));
        let map = Mutate::Map([("1".to_string(), d("1")), ("3".to_string(), d("0.5"))].into());
        assert_eq!(map.apply(d("1.0")), d("1"));
        assert_eq!(map.apply(d("3")), d("0.5"));
        assert_eq!(map.apply(d("2")), Decimal::ZERO, "unmatched is 0");
    }

    #[test]
    fn time_weighted_integrates_a_resize_within_the_hour() {
        // 10 GiB from 12:00 (carried in), resized to 20 GiB at 12:15:
        // 10 × 0.25 + 20 × 0.75 = 17.5 GiB-hours.
        let samples = [(t(12, 15), d("20"))];
        assert_eq!(
            time_weighted(&samples, Some(d("10")), None, hour(12)),
            d("17.5")
        );
    }

    #[test]
    fn time_weighted_carries_the_last_value_across_boundaries_until_deletion() {
        // No sample in 13:00–14:00: the carried 20 holds the whole hour.
        assert_eq!(time_weighted(&[], Some(d("20")), None, hour(13)), d("20"));
        // Deleted at 13:30: half an hour.
        assert_eq!(
            time_weighted(&[], Some(d("20")), Some(t(13, 30)), hour(13)),
            d("10")
        );
        // Deleted before the period: nothing.
        assert_eq!(
            time_weighted(&[], Some(d("20")), Some(t(12, 0)), hour(13)),
            d("0")
        );
        // Created at 13:40 with no carry-in: 20 minutes.
        let created = [(t(13, 40), d("30"))];
        assert_eq!(time_weighted(&created, None, None, hour(13)), d("10"));
    }

    #[test]
    fn time_weighted_ignores_arrival_order() {
        let a = [
            (t(12, 45), d("5")),
            (t(12, 15), d("20")),
            (t(12, 30), d("8")),
        ];
        let mut b = a;
        b.reverse();
        // 10×0.25 + 20×0.25 + 8×0.25 + 5×0.25 = 10.75
        assert_eq!(time_weighted(&a, Some(d("10")), None, hour(12)), d("10.75"));
        assert_eq!(time_weighted(&b, Some(d("10")), None, hour(12)), d("10.75"));
    }

    fn change(h: u32, m: u32, state: &str, flavor: &str) -> StateChange {
        StateChange {
            time: t(h, m),
            state: state.into(),
            split: Some(flavor.into()),
        }
    }

    fn billable() -> BTreeSet<String> {
        ["active".to_string(), "paused".to_string()].into()
    }

    #[test]
    fn state_duration_splits_by_flavor_on_resize() {
        // Active m1.small from before the hour; resized to m1.large at 12:20;
        // powered off at 12:50.
        let carry = change(9, 0, "active", "m1.small");
        let changes = [
            change(12, 20, "active", "m1.large"),
            change(12, 50, "shutoff", "m1.large"),
        ];
        let h = state_duration(&changes, Some(&carry), &billable(), hour(12));
        // 20 minutes is a third of an hour: a repeating decimal, cut at 28
        // significant digits by the one division at the end.
        assert_eq!(h[&Some("m1.small".to_string())], d("20") / d("60"));
        assert_eq!(h[&Some("m1.large".to_string())], d("0.5"));
    }

    #[test]
    fn state_duration_carries_a_resource_created_before_the_range() {
        // Created long before; deleted at 12:30 (no record in the range but the delete).
        let carry = change(1, 0, "active", "m1.small");
        let h = state_duration(
            &[change(12, 30, "deleted", "m1.small")],
            Some(&carry),
            &billable(),
            hour(12),
        );
        assert_eq!(h[&Some("m1.small".to_string())], d("0.5"));
        // The next hour: deleted is not billable.
        let h = state_duration(
            &[],
            Some(&change(12, 30, "deleted", "m1.small")),
            &billable(),
            hour(13),
        );
        assert!(h.is_empty());
    }

    #[test]
    fn state_duration_ignores_arrival_order_and_counts_shelving_as_not_billable() {
        let changes = [
            change(12, 40, "active", "f"),
            change(12, 10, "shelved_offloaded", "f"),
            change(12, 0, "active", "f"),
        ];
        let h = state_duration(&changes, None, &billable(), hour(12));
        // 12:00–12:10 and 12:40–13:00 active: 30 minutes.
        assert_eq!(h[&Some("f".to_string())], d("0.5"));
    }

    proptest! {
        #[test]
        fn hours_split_across_periods_add_up(minutes in prop::collection::vec(1u32..180, 1..6), v in 1i64..1000) {
            // A constant gauge over 12:00–15:00, sampled at arbitrary points:
            // the three hourly integrals add to value × 3.
            let samples: Vec<_> = minutes.iter().map(|m| (t(12, 0) + chrono::Duration::minutes(i64::from(*m)), Decimal::from(v))).collect();
            let total: Decimal = (12..15).map(|h| {
                let carry = Some(Decimal::from(v));
                time_weighted(&samples, carry, None, hour(h))
            }).sum();
            prop_assert_eq!(total, Decimal::from(v * 3));
        }
    }
}
