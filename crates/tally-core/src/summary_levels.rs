//! The resource-month summary level of the whole UTC months a rating run
//! covers, added up from its daily cells while it rates.
//!
//! The database keeps coarser levels above the daily cells (see
//! `tally-rate`'s `levels` module). The one per resource and month is the
//! costliest to recompute: it groups every cell of the month, and nearly
//! as many rows come out as go in are keyed by resource. A run that covers
//! a whole month is the only run whose cells count in that month once it
//! commits, so that level is exactly the sums of its own cells, which
//! this module adds as the cells are made, for the commit to write.
//!
//! The sums are the ones SQL takes over the stored cells, to the last
//! digit: each cell is split into whole units and a fraction (truncating
//! toward zero, as both databases divide integers), the parts are added
//! apart, and the fraction's whole units are carried at the end.

use std::collections::HashMap;

use chrono::DateTime;

use crate::rollup::{
    AMOUNT_SCALE, CellKey, DAY_US, DailyCell, QUANTITY_SCALE, next_utc_month_start, utc_month_start,
};

/// A value of a summary level: whole units and the fraction left, in
/// `10^-scale` of a unit (both carry the sign of the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SplitValue {
    /// Whole units.
    pub whole: i64,
    /// What is left, in `10^-scale` of a unit; `|fraction| < 10^scale`.
    pub fraction: i64,
}

/// Exact sums of cells' scaled integers, kept as SQL keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SplitSum {
    whole: i128,
    fraction: i128,
}

impl SplitSum {
    fn add(&mut self, scaled: i64, scale: u32) {
        let s = 10i64.pow(scale);
        self.whole += i128::from(scaled / s);
        self.fraction += i128::from(scaled % s);
    }

    fn merge(&mut self, other: &SplitSum) {
        self.whole += other.whole;
        self.fraction += other.fraction;
    }

    fn value(&self, scale: u32) -> Option<SplitValue> {
        let s = 10i128.pow(scale);
        Some(SplitValue {
            whole: i64::try_from(self.whole + self.fraction / s).ok()?,
            fraction: i64::try_from(self.fraction % s).ok()?,
        })
    }
}

/// The sums a level row keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LevelSums {
    quantity: SplitSum,
    amount: SplitSum,
    lines: i64,
    errors: i64,
}

impl LevelSums {
    fn add(&mut self, cell: &DailyCell) {
        self.quantity.add(cell.quantity_micro, QUANTITY_SCALE);
        self.amount.add(cell.amount_nano, AMOUNT_SCALE);
        self.lines += cell.line_count;
        self.errors += cell.error_count;
    }

    fn merge(&mut self, other: &LevelSums) {
        self.quantity.merge(&other.quantity);
        self.amount.merge(&other.amount);
        self.lines += other.lines;
        self.errors += other.errors;
    }

    fn values(&self) -> Option<LevelValues> {
        Some(LevelValues {
            quantity: self.quantity.value(QUANTITY_SCALE)?,
            amount: self.amount.value(AMOUNT_SCALE)?,
            line_count: self.lines,
            error_count: self.errors,
        })
    }
}

/// What a level row holds besides its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelValues {
    /// Quantity, in millionths for the fraction ([`QUANTITY_SCALE`]).
    pub quantity: SplitValue,
    /// Amount, in billionths for the fraction ([`AMOUNT_SCALE`]).
    pub amount: SplitValue,
    /// Rated lines added up.
    pub line_count: i64,
    /// Of those, lines that could not be priced.
    pub error_count: i64,
}

/// A resource-month's sums and the last day it had usage.
#[derive(Debug, Clone, Copy, Default)]
struct ResourceMonthSums {
    sums: LevelSums,
    last_day_us: i64,
}

/// A level's value does not fit the database's 64-bit integers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the summary of {meter} for project '{project_id}' does not fit 64-bit integers; check the meter's unit conversion (factor)"
)]
pub struct LevelOverflow {
    /// The project.
    pub project_id: String,
    /// The meter.
    pub meter: String,
}

/// The resource-month level of the whole UTC months in a run's range,
/// added from its cells.
///
/// Memory grows with the resources of those months, not with the records;
/// past `limit` rows it gives up (and drops what it held), and the run's
/// days are recomputed from the stored cells instead.
#[derive(Debug)]
pub struct WholeMonthLevels {
    /// `[start, end)` of each whole month, in µs, in order.
    months: Vec<(i64, i64)>,
    resource_months: HashMap<CellKey, ResourceMonthSums>,
    limit: usize,
    gave_up: bool,
}

/// The whole UTC months inside `[from_us, to_us)`, as `[start, end)` µs.
pub fn whole_months(from_us: i64, to_us: i64) -> Vec<(i64, i64)> {
    let at = |us| DateTime::from_timestamp_micros(us).unwrap_or_default();
    let (Some(from), Some(_)) = (
        DateTime::from_timestamp_micros(from_us),
        DateTime::from_timestamp_micros(to_us),
    ) else {
        return Vec::new();
    };
    let mut start = utc_month_start(from).timestamp_micros();
    if start < from_us {
        start = next_utc_month_start(from).timestamp_micros();
    }
    let mut months = Vec::new();
    loop {
        let end = next_utc_month_start(at(start)).timestamp_micros();
        if end > to_us {
            return months;
        }
        months.push((start, end));
        start = end;
    }
}

impl WholeMonthLevels {
    /// Levels of the whole months of `[from_us, to_us)`, holding at most
    /// `limit` rows.
    pub fn new(from_us: i64, to_us: i64, limit: usize) -> WholeMonthLevels {
        WholeMonthLevels {
            months: whole_months(from_us, to_us),
            resource_months: HashMap::new(),
            limit,
            gave_up: false,
        }
    }

    /// The whole months whose levels are held, in order; none once it gave
    /// up (every day of the run is then recomputed from stored cells).
    pub fn months(&self) -> &[(i64, i64)] {
        if self.gave_up { &[] } else { &self.months }
    }

    fn month_of(&self, day_us: i64) -> Option<(i64, i64)> {
        self.months
            .iter()
            .find(|(start, end)| day_us >= *start && day_us < *end)
            .copied()
    }

    fn give_up(&mut self) {
        self.gave_up = true;
        self.resource_months = HashMap::new();
    }

    /// Adds a stored cell. Cells outside the whole months are left to the
    /// stored-cell recomputation. A cell may come in several parts (a key
    /// written by two flushes): each part adds, as the stored rows do.
    pub fn add(&mut self, cell: &DailyCell) {
        if self.gave_up {
            return;
        }
        let day_us = cell.key.from_us.div_euclid(DAY_US) * DAY_US;
        let Some((month, next)) = self.month_of(day_us) else {
            return;
        };
        // A resource month is keyed as a cell spanning the month.
        let r = self
            .resource_months
            .entry(CellKey {
                from_us: month,
                to_us: next,
                ..cell.key.clone()
            })
            .or_default();
        r.sums.add(cell);
        r.last_day_us = r.last_day_us.max(day_us);
        if self.resource_months.len() > self.limit {
            self.give_up();
        }
    }

    /// Adds another part of the same run (another worker's cells). If
    /// either gave up, so does the result.
    pub fn merge(&mut self, other: WholeMonthLevels) {
        if self.gave_up || other.gave_up || self.months != other.months {
            self.give_up();
            return;
        }
        for (k, v) in other.resource_months {
            let r = self.resource_months.entry(k).or_default();
            r.sums.merge(&v.sums);
            r.last_day_us = r.last_day_us.max(v.last_day_us);
        }
        if self.resource_months.len() > self.limit {
            self.give_up();
        }
    }

    /// The resource-month rows, keyed as cells spanning their month, with
    /// each one's last day with usage (µs), in key order.
    pub fn resource_months(&self) -> Result<Vec<(&CellKey, LevelValues, i64)>, LevelOverflow> {
        let mut rows = self
            .resource_months
            .iter()
            .map(|(k, s)| {
                let values = s.sums.values().ok_or_else(|| LevelOverflow {
                    project_id: k.project_id.clone(),
                    meter: k.meter.clone(),
                })?;
                Ok((k, values, s.last_day_us))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn us(y: i32, m: u32, d: u32, h: u32) -> i64 {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
            .unwrap()
            .timestamp_micros()
    }

    fn cell(from_us: i64, resource: &str, quantity_micro: i64, amount_nano: i64) -> DailyCell {
        DailyCell {
            key: CellKey {
                from_us,
                to_us: from_us + DAY_US,
                project_id: "p1".into(),
                resource_id: resource.into(),
                meter: "instance".into(),
                unit: "hour".into(),
                currency: "EUR".into(),
                attributes: "{}".into(),
            },
            quantity_micro,
            amount_nano,
            line_count: 24,
            error_count: 0,
        }
    }

    #[test]
    fn only_months_wholly_inside_the_range_count() {
        assert_eq!(
            whole_months(us(2026, 10, 1, 0), us(2026, 11, 1, 0)),
            vec![(us(2026, 10, 1, 0), us(2026, 11, 1, 0))]
        );
        assert_eq!(
            whole_months(us(2026, 9, 15, 0), us(2026, 12, 2, 0)),
            vec![
                (us(2026, 10, 1, 0), us(2026, 11, 1, 0)),
                (us(2026, 11, 1, 0), us(2026, 12, 1, 0))
            ]
        );
        assert!(whole_months(us(2026, 10, 1, 1), us(2026, 11, 1, 0)).is_empty());
        assert!(whole_months(us(2026, 10, 1, 0), us(2026, 10, 31, 23)).is_empty());
    }

    #[test]
    fn cells_add_into_their_resource_month() {
        let mut levels = WholeMonthLevels::new(us(2026, 10, 1, 0), us(2026, 11, 1, 0), 100);
        levels.add(&cell(us(2026, 10, 1, 0), "vm1", 1_500_000, 2_000_000_001));
        levels.add(&cell(us(2026, 10, 3, 0), "vm1", 1_500_000, 999_999_999));
        levels.add(&cell(us(2026, 10, 2, 0), "vm2", 1_000_000, 1));
        let months = levels.resource_months().unwrap();
        assert_eq!(months.len(), 2);
        assert_eq!(months[0].0.resource_id, "vm1");
        // 1.5 + 1.5 = 3 whole and no fraction; 2.000000001 + 0.999999999 = 3.
        assert_eq!(
            months[0].1.quantity,
            SplitValue {
                whole: 3,
                fraction: 0
            }
        );
        assert_eq!(
            months[0].1.amount,
            SplitValue {
                whole: 3,
                fraction: 0
            }
        );
        assert_eq!(months[0].1.line_count, 48);
        assert_eq!(months[0].2, us(2026, 10, 3, 0));
        assert_eq!(months[1].2, us(2026, 10, 2, 0));
    }

    #[test]
    fn cells_outside_whole_months_are_left_out() {
        let mut levels = WholeMonthLevels::new(us(2026, 9, 30, 0), us(2026, 11, 1, 0), 100);
        levels.add(&cell(us(2026, 9, 30, 0), "vm1", 1, 1));
        assert!(levels.resource_months().unwrap().is_empty());
        assert_eq!(levels.months().len(), 1);
    }

    #[test]
    fn past_its_limit_it_gives_up_and_holds_nothing() {
        let mut levels = WholeMonthLevels::new(us(2026, 10, 1, 0), us(2026, 11, 1, 0), 1);
        levels.add(&cell(us(2026, 10, 1, 0), "vm1", 1, 1));
        assert_eq!(levels.months().len(), 1);
        levels.add(&cell(us(2026, 10, 1, 0), "vm2", 1, 1));
        assert!(levels.months().is_empty());
        assert!(levels.resource_months().unwrap().is_empty());
        let mut other = WholeMonthLevels::new(us(2026, 10, 1, 0), us(2026, 11, 1, 0), 3);
        other.merge(levels);
        assert!(other.months().is_empty());
    }

    #[test]
    fn negative_amounts_split_like_sql() {
        let mut levels = WholeMonthLevels::new(us(2026, 10, 1, 0), us(2026, 11, 1, 0), 100);
        levels.add(&cell(us(2026, 10, 1, 0), "vm1", 0, -1_500_000_000));
        levels.add(&cell(us(2026, 10, 2, 0), "vm1", 0, 700_000_000));
        // -1 whole - 0.5 and 0 whole + 0.7: whole -1, fraction 0.2.
        assert_eq!(
            levels.resource_months().unwrap()[0].1.amount,
            SplitValue {
                whole: -1,
                fraction: 200_000_000
            }
        );
    }

    proptest! {
        /// However cells are split between workers, the merged level is
        /// the exact sum of every cell.
        #[test]
        fn split_sums_are_exact_whatever_the_split(
            amounts in proptest::collection::vec(-10_000_000_000_000i64..10_000_000_000_000, 1..40),
            cut in 0usize..40,
        ) {
            let range = (us(2026, 10, 1, 0), us(2026, 11, 1, 0));
            let mut a = WholeMonthLevels::new(range.0, range.1, 1000);
            let mut b = WholeMonthLevels::new(range.0, range.1, 1000);
            for (i, amount) in amounts.iter().enumerate() {
                let c = cell(us(2026, 10, 1, 0), "vm1", *amount, *amount);
                if i < cut { a.add(&c) } else { b.add(&c) }
            }
            a.merge(b);
            let total: i128 = amounts.iter().map(|v| i128::from(*v)).sum();
            let months = a.resource_months().unwrap();
            let v = months[0].1.amount;
            prop_assert_eq!(
                i128::from(v.whole) * 1_000_000_000 + i128::from(v.fraction),
                total
            );
            prop_assert!(v.fraction.abs() < 1_000_000_000);
            let q = months[0].1.quantity;
            prop_assert_eq!(i128::from(q.whole) * 1_000_000 + i128::from(q.fraction), total);
        }
    }
}
