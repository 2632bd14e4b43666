//! Daily cost cells: what summaries, dashboards and cost-over-time charts
//! add up instead of re-reading every hourly rated line.
//!
//! A cell is one (UTC day, project, resource, meter, group values) of a
//! rating run. Its quantity and amount are kept as integers of a fixed
//! fraction of a unit ([`QUANTITY_SCALE`], [`AMOUNT_SCALE`]), rounded once
//! per cell with [`ROLLUP_ROUNDING_RULE`], so a database can add any number
//! of cells exactly. Invoices never use cells: they are summed from the
//! exact rated lines (docs/rounding.md).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::{Attributes, RatedLine};

/// Decimal places kept of a cell's amount: billionths of a currency unit.
pub const AMOUNT_SCALE: u32 = 9;
/// Decimal places kept of a cell's quantity: millionths of a unit.
pub const QUANTITY_SCALE: u32 = 6;
/// The one rounding applied to a cell: half to even at its scale.
pub const ROLLUP_ROUNDING_RULE: &str = "half-even per daily cell (amount 1e-9, quantity 1e-6)";

/// Microseconds in a UTC day.
pub const DAY_US: i64 = 86_400_000_000;

/// A cell's value does not fit the database's 64-bit integers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the daily {what} of {meter} for resource '{resource_id}' ({value}) does not fit a 64-bit cell at scale {scale}; check the meter's unit conversion (factor)"
)]
pub struct CellOverflow {
    /// `amount` or `quantity`.
    pub what: &'static str,
    /// The meter.
    pub meter: String,
    /// The resource.
    pub resource_id: String,
    /// The exact value that did not fit.
    pub value: Decimal,
    /// The scale it was stored at.
    pub scale: u32,
}

/// The identity of a cell.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellKey {
    /// Start of the cell: its UTC day's start, or the range's start if later
    /// (microseconds since the epoch).
    pub from_us: i64,
    /// End of the cell: the next day's start, or the range's end if earlier.
    pub to_us: i64,
    /// The paying project.
    pub project_id: String,
    /// The resource.
    pub resource_id: String,
    /// The rated meter.
    pub meter: String,
    /// The meter's unit.
    pub unit: String,
    /// The currency of the amount (empty when unpriced).
    pub currency: String,
    /// The line's group values and location attributes, as a JSON object
    /// with sorted keys (what summaries group "by any attribute" on).
    pub attributes: String,
}

/// A finished cell, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyCell {
    /// Which cell.
    pub key: CellKey,
    /// Quantity in millionths of the unit.
    pub quantity_micro: i64,
    /// Amount in billionths of the currency unit.
    pub amount_nano: i64,
    /// Rated lines in the cell.
    pub line_count: i64,
    /// Lines that could not be priced.
    pub error_count: i64,
}

#[derive(Debug, Default, Clone)]
struct Sums {
    quantity: Decimal,
    amount: Decimal,
    lines: i64,
    errors: i64,
}

impl Sums {
    fn merge(&mut self, other: &Sums) {
        self.quantity += other.quantity;
        self.amount += other.amount;
        self.lines += other.lines;
        self.errors += other.errors;
    }
}

/// Attributes copied into a cell besides the meter's group values: where
/// the resource runs, which summaries and FOCUS exports group on.
pub const LOCATION_ATTRIBUTES: [&str; 2] = ["region", "availability_zone"];

/// The start (µs) of the UTC day holding `t`.
pub fn day_start_us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros().div_euclid(DAY_US) * DAY_US
}

/// The first instant of the UTC calendar month holding `t`: summaries'
/// month buckets and the month summary level start there.
pub fn utc_month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    let midnight = t
        .date_naive()
        .with_day(1)
        .expect("day 1 exists")
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists");
    Utc.from_utc_datetime(&midnight)
}

/// The first instant of the UTC calendar month after the one holding `t`.
pub fn next_utc_month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    // Day 1 plus 32 days always lands in the next month.
    utc_month_start(utc_month_start(t) + chrono::Duration::days(32))
}

/// Converts an exact value to an integer of `scale` decimal places.
pub fn to_scaled(value: Decimal, scale: u32) -> Option<i64> {
    let rounded = value.round_dp_with_strategy(scale, RoundingStrategy::MidpointNearestEven);
    let mut m = rounded;
    m.rescale(scale);
    if m.scale() != scale {
        return None;
    }
    m.mantissa().to_i64()
}

/// Back from an integer of `scale` decimal places to a decimal.
pub fn from_scaled(value: i64, scale: u32) -> Decimal {
    Decimal::new(value, scale).normalize()
}

/// Adds rated lines into daily cells; [`DailyCells::drain`] hands them out.
#[derive(Debug)]
pub struct DailyCells {
    from_us: i64,
    to_us: i64,
    cells: BTreeMap<CellKey, Sums>,
    /// The cell the previous line went to. A resource's lines arrive in
    /// time order, 24 to a day with the same attributes, so most lines
    /// join it without building a key (this runs for every rated line).
    open: Option<OpenCell>,
}

#[derive(Debug)]
struct OpenCell {
    key: CellKey,
    sums: Sums,
    attributes: Arc<Attributes>,
    group: BTreeMap<String, String>,
}

/// The attributes a cell (and a summary) groups on: the meter's group
/// values, then the location attributes the line's records carry.
pub fn cell_attributes(
    group: &BTreeMap<String, String>,
    attributes: &Attributes,
) -> BTreeMap<String, String> {
    let mut out = group.clone();
    for name in LOCATION_ATTRIBUTES {
        if let Some(v) = attributes.get(name) {
            out.entry(name.to_string()).or_insert_with(|| v.text());
        }
    }
    out
}

/// What a daily cell reads of a rated line, borrowed: the rating job adds
/// lines it never builds as [`RatedLine`]s.
#[derive(Debug, Clone, Copy)]
pub struct CellInput<'a> {
    /// See [`RatedLine::project_id`].
    pub project_id: &'a str,
    /// See [`RatedLine::resource_id`].
    pub resource_id: &'a str,
    /// See [`RatedLine::meter`].
    pub meter: &'a str,
    /// See [`RatedLine::unit`].
    pub unit: &'a str,
    /// See [`RatedLine::currency`].
    pub currency: &'a str,
    /// See [`RatedLine::group`].
    pub group: &'a BTreeMap<String, String>,
    /// See [`RatedLine::attributes`].
    pub attributes: &'a Arc<Attributes>,
    /// See [`RatedLine::period_start`].
    pub period_start: DateTime<Utc>,
    /// See [`RatedLine::quantity`].
    pub quantity: Decimal,
    /// See [`RatedLine::amount`].
    pub amount: Decimal,
    /// Whether the line could not be priced ([`RatedLine::error`]).
    pub has_error: bool,
}

impl<'a> CellInput<'a> {
    /// What a cell reads of `line`.
    pub fn of(line: &'a RatedLine) -> CellInput<'a> {
        CellInput {
            project_id: &line.project_id,
            resource_id: &line.resource_id,
            meter: &line.meter,
            unit: &line.unit,
            currency: &line.currency,
            group: &line.group,
            attributes: &line.attributes,
            period_start: line.period_start,
            quantity: line.quantity,
            amount: line.amount,
            has_error: line.error.is_some(),
        }
    }
}

impl DailyCells {
    /// An empty aggregation of lines rated over `[from, to)`; cells are cut
    /// to that range, so a range that starts or ends mid-day has partial
    /// cells that never overlap another range's.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> DailyCells {
        DailyCells {
            from_us: from.timestamp_micros(),
            to_us: to.timestamp_micros(),
            cells: BTreeMap::new(),
            open: None,
        }
    }

    /// Cells held.
    pub fn len(&self) -> usize {
        self.cells.len() + usize::from(self.open.is_some())
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn close_open(&mut self) {
        if let Some(open) = self.open.take() {
            self.cells.entry(open.key).or_default().merge(&open.sums);
        }
    }

    /// Adds one line to its day's cell.
    pub fn add(&mut self, line: &RatedLine) {
        self.add_line(&CellInput::of(line));
    }

    /// Adds one line, given by the fields a cell reads, to its day's cell.
    pub fn add_line(&mut self, line: &CellInput<'_>) {
        let from_us = day_start_us(line.period_start).max(self.from_us);
        let joins_open = self.open.as_ref().is_some_and(|o| {
            o.key.from_us == from_us
                && o.key.resource_id == line.resource_id
                && o.key.meter == line.meter
                && o.key.project_id == line.project_id
                && o.key.unit == line.unit
                && o.key.currency == line.currency
                && Arc::ptr_eq(&o.attributes, line.attributes)
                && o.group == *line.group
        });
        if !joins_open {
            self.close_open();
            let day = day_start_us(line.period_start);
            let attrs = cell_attributes(line.group, line.attributes);
            self.open = Some(OpenCell {
                key: CellKey {
                    from_us,
                    to_us: (day + DAY_US).min(self.to_us),
                    project_id: line.project_id.to_string(),
                    resource_id: line.resource_id.to_string(),
                    meter: line.meter.to_string(),
                    unit: line.unit.to_string(),
                    currency: line.currency.to_string(),
                    attributes: serde_json::to_string(&attrs).expect("strings serialize"),
                },
                sums: Sums::default(),
                attributes: line.attributes.clone(),
                group: line.group.clone(),
            });
        }
        let s = &mut self.open.as_mut().expect("opened above").sums;
        s.quantity += line.quantity;
        s.amount += line.amount;
        s.lines += 1;
        s.errors += i64::from(line.has_error);
    }

    /// Takes every cell out, in key order, converted to integers.
    pub fn drain(&mut self) -> Result<Vec<DailyCell>, CellOverflow> {
        self.close_open();
        std::mem::take(&mut self.cells)
            .into_iter()
            .map(|(key, s)| {
                let overflow = |what, value, scale| CellOverflow {
                    what,
                    meter: key.meter.clone(),
                    resource_id: key.resource_id.clone(),
                    value,
                    scale,
                };
                let quantity_micro = to_scaled(s.quantity, QUANTITY_SCALE)
                    .ok_or_else(|| overflow("quantity", s.quantity, QUANTITY_SCALE))?;
                let amount_nano = to_scaled(s.amount, AMOUNT_SCALE)
                    .ok_or_else(|| overflow("amount", s.amount, AMOUNT_SCALE))?;
                Ok(DailyCell {
                    key,
                    quantity_micro,
                    amount_nano,
                    line_count: s.lines,
                    error_count: s.errors,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::Arc;

    use super::*;
    use crate::{AttributeValue, Attributes};

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn months_start_and_end_on_utc_calendar_days() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        for (at, start, next) in [
            (
                "2026-10-31T23:59:59Z",
                "2026-10-01T00:00:00Z",
                "2026-11-01T00:00:00Z",
            ),
            (
                "2026-12-01T00:00:00Z",
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                "2024-02-29T12:00:00Z",
                "2024-02-01T00:00:00Z",
                "2024-03-01T00:00:00Z",
            ),
            (
                "2026-01-31T00:00:00Z",
                "2026-01-01T00:00:00Z",
                "2026-02-01T00:00:00Z",
            ),
        ] {
            assert_eq!(utc_month_start(t(at)), t(start), "{at}");
            assert_eq!(next_utc_month_start(t(at)), t(next), "{at}");
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn month() -> DailyCells {
        DailyCells::new(t("2026-10-01T00:00:00Z"), t("2026-11-01T00:00:00Z"))
    }

    fn line(start: &str, amount: &str) -> RatedLine {
        let start = DateTime::parse_from_rfc3339(start).unwrap().to_utc();
        let mut attributes = Attributes::new();
        attributes.insert(
            "availability_zone".into(),
            AttributeValue::String("nova".into()),
        );
        attributes.insert("flavor".into(), AttributeValue::String("m1.small".into()));
        RatedLine {
            project_id: "p1".into(),
            resource_id: "vm1".into(),
            meter: "instance".into(),
            group: [("flavor".to_string(), "m1.small".to_string())].into(),
            period_start: start,
            period_end: start + chrono::Duration::hours(1),
            quantity: d("1"),
            unit: "hour".into(),
            unit_price: Some(d(amount)),
            amount: d(amount),
            currency: "EUR".into(),
            plan_id: "p".into(),
            plan_version: 1,
            rule: "rules[0]".into(),
            raw_count: 1,
            segments: vec![],
            attributes: Arc::new(attributes),
            error: None,
        }
    }

    #[test]
    fn lines_of_one_day_share_a_cell_and_midnight_starts_the_next() {
        let mut cells = month();
        cells.add(&line("2026-10-01T00:00:00Z", "0.0125"));
        cells.add(&line("2026-10-01T23:00:00Z", "0.0125"));
        cells.add(&line("2026-10-02T00:00:00Z", "0.0125"));
        let out = cells.drain().unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].amount_nano, 25_000_000);
        assert_eq!(out[0].quantity_micro, 2_000_000);
        assert_eq!(out[0].line_count, 2);
        assert_eq!(
            out[0].key.attributes,
            r#"{"availability_zone":"nova","flavor":"m1.small"}"#
        );
        assert_eq!(out[1].key.from_us - out[0].key.from_us, DAY_US);
        assert_eq!(out[0].key.to_us, out[1].key.from_us);
        assert!(cells.is_empty());
    }

    #[test]
    fn cells_round_half_to_even_once_at_their_scale() {
        assert_eq!(to_scaled(d("0.0000000005"), AMOUNT_SCALE), Some(0));
        assert_eq!(to_scaled(d("0.0000000015"), AMOUNT_SCALE), Some(2));
        assert_eq!(to_scaled(d("-0.0000000015"), AMOUNT_SCALE), Some(-2));
        assert_eq!(to_scaled(d("1"), QUANTITY_SCALE), Some(1_000_000));
        assert_eq!(from_scaled(1_500_000, QUANTITY_SCALE), d("1.5"));
        // One third of an hour per line, three lines: the cell is exact
        // because the sum is taken before the one rounding.
        let mut cells = month();
        for _ in 0..3 {
            let mut l = line("2026-10-01T05:00:00Z", "1");
            l.quantity = d("1") / d("3");
            cells.add(&l);
        }
        assert_eq!(cells.drain().unwrap()[0].quantity_micro, 1_000_000);
    }

    #[test]
    fn a_value_too_large_for_a_cell_is_an_error_naming_the_meter() {
        let mut cells = month();
        let mut l = line("2026-10-01T05:00:00Z", "1");
        l.quantity = d("1e14");
        cells.add(&l);
        let e = cells.drain().unwrap_err();
        assert_eq!(e.what, "quantity");
        assert!(e.to_string().contains("instance"), "{e}");
    }

    #[test]
    fn lines_out_of_order_and_interleaved_still_sum_per_cell() {
        let mut cells = month();
        let a = line("2026-10-01T01:00:00Z", "1");
        let mut b = line("2026-10-01T02:00:00Z", "2");
        b.resource_id = "vm2".into();
        let c = line("2026-10-01T03:00:00Z", "4");
        let mut d = line("2026-10-01T04:00:00Z", "8");
        d.group.insert("flavor".into(), "m1.large".into());
        for l in [&a, &b, &c, &d] {
            cells.add(l);
        }
        let out = cells.drain().unwrap();
        let amounts: Vec<(String, i64)> = out
            .iter()
            .map(|c| (c.key.resource_id.clone(), c.amount_nano / 1_000_000_000))
            .collect();
        assert_eq!(
            amounts,
            vec![("vm1".into(), 8), ("vm1".into(), 5), ("vm2".into(), 2)]
        );
    }

    #[test]
    fn a_range_that_starts_mid_day_cuts_its_cells() {
        let mut cells = DailyCells::new(t("2026-10-01T05:00:00Z"), t("2026-10-01T10:00:00Z"));
        cells.add(&line("2026-10-01T05:00:00Z", "1"));
        let out = cells.drain().unwrap();
        assert_eq!(
            out[0].key.from_us,
            t("2026-10-01T05:00:00Z").timestamp_micros()
        );
        assert_eq!(
            out[0].key.to_us,
            t("2026-10-01T10:00:00Z").timestamp_micros()
        );
    }

    #[test]
    fn days_before_the_epoch_round_down() {
        let t = DateTime::parse_from_rfc3339("1969-12-31T12:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(day_start_us(t), -DAY_US);
    }
}
