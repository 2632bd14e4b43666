//! Metering one resource: its raw records in a rating window become
//! unpriced lines, one per rated meter, group and rating period.
//!
//! This is the part of the rating job that knows billing semantics, and it
//! is pure (no I/O, no async): the DataFusion scan in `job` hands it one
//! resource at a time, sorted, and prices what it returns. Keeping it pure
//! is what lets the same function run in-process or, later, inside a
//! Ballista executor, and be tested with hand-computed examples.
//!
//! A whole resource (every raw meter of one project's resource) is metered
//! at once because a gauge's value is carried "until the resource's
//! deletion", and the deletion usually arrives on another meter (the
//! `instance` lifecycle record ends the `vcpus` gauge).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use tally_core::metering::{Period, StateChange, state_duration, time_weighted};
use tally_core::{AttributeValue, Attributes, MeterKind};

use crate::meters::{Aggregation, MeterDefinition, MeterSet};

/// One raw record of a resource, as the rating job reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawUsage {
    /// The raw meter name (`vcpus`).
    pub meter: Arc<str>,
    /// Event time.
    pub time: DateTime<Utc>,
    /// When Tally received it: among copies of one id, the earliest wins.
    pub received_at: DateTime<Utc>,
    /// The record's idempotency key, hashed from (source, id).
    pub key: u128,
    /// Gauge, delta or cumulative.
    pub kind: MeterKind,
    /// The raw volume.
    pub volume: Decimal,
    /// The producer's unit.
    pub unit: Option<Arc<str>>,
    /// Attributes, shared between records that carry identical ones.
    pub attributes: Arc<Attributes>,
    /// Index of the segment it was read from, in the run's segment list.
    pub segment: u32,
}

/// The time range a run rates and how it is cut into rating periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatingWindow {
    /// First instant rated (inclusive), aligned to `period`.
    pub from: DateTime<Utc>,
    /// End of the range (exclusive), aligned to `period`.
    pub to: DateTime<Utc>,
    /// Length of one rating period.
    pub period: Duration,
}

/// Why a rating window cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// `to` is not after `from`.
    #[error("the range is empty: --to ({to}) must be after --from ({from})")]
    Empty {
        /// Start.
        from: DateTime<Utc>,
        /// End.
        to: DateTime<Utc>,
    },
    /// The period length is not a whole number of seconds dividing a day.
    #[error(
        "a rating period of {0} s does not divide a day into whole periods: use 1h, 15m, 1d and the like"
    )]
    BadPeriod(i64),
    /// A bound is not on a period boundary.
    #[error(
        "{which} ({at}) is not on a rating-period boundary ({period_seconds} s since 1970-01-01T00:00:00Z); round it to a whole period"
    )]
    Unaligned {
        /// `from` or `to`.
        which: &'static str,
        /// The bound.
        at: DateTime<Utc>,
        /// Period length.
        period_seconds: i64,
    },
}

impl RatingWindow {
    /// A window whose bounds fall on period boundaries counted from the Unix
    /// epoch, so that rating a sub-range later cuts the same periods.
    pub fn new(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        period: Duration,
    ) -> Result<RatingWindow, WindowError> {
        let secs = period.num_seconds();
        if secs <= 0 || 86_400 % secs != 0 || period != Duration::seconds(secs) {
            return Err(WindowError::BadPeriod(secs));
        }
        if to <= from {
            return Err(WindowError::Empty { from, to });
        }
        for (which, at) in [("--from", from), ("--to", to)] {
            if at.timestamp_subsec_micros() != 0 || at.timestamp().rem_euclid(secs) != 0 {
                return Err(WindowError::Unaligned {
                    which,
                    at,
                    period_seconds: secs,
                });
            }
        }
        Ok(RatingWindow { from, to, period })
    }

    /// Number of periods in the window.
    pub fn len(&self) -> usize {
        ((self.to - self.from).num_seconds() / self.period.num_seconds()) as usize
    }

    /// Whether the window has no period (never, once built by `new`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th period.
    pub fn period_at(&self, i: usize) -> Period {
        let start = self.from + self.period * i as i32;
        Period {
            start,
            end: start + self.period,
        }
    }

    /// The index of the period holding `t` (which must be in the window).
    pub fn index_of(&self, t: DateTime<Utc>) -> usize {
        ((t - self.from).num_microseconds().unwrap_or(0) / self.period.num_microseconds().unwrap_or(1))
            as usize
    }

    /// Whether `t` is inside the window.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        t >= self.from && t < self.to
    }
}

/// One resource's usage of one rated meter in one period, before pricing.
#[derive(Debug, Clone, PartialEq)]
pub struct MeteredLine {
    /// The rated meter.
    pub meter: String,
    /// Its unit.
    pub unit: String,
    /// The rating period.
    pub period: Period,
    /// Group-by attribute values.
    pub group: BTreeMap<String, String>,
    /// Aggregated quantity, full precision.
    pub quantity: Decimal,
    /// Attributes of the latest record behind the line.
    pub attributes: Arc<Attributes>,
    /// Records of the period that went into the line.
    pub raw_count: u64,
    /// Their segments (indices into the run's segment list).
    pub segments: BTreeSet<u32>,
    /// Why the quantity could not be computed, if it could not.
    pub error: Option<String>,
}

/// Whether a record says its resource is gone: OpenStack's `*.delete.end`
/// notifications, or a `status`/`state` of `deleted`.
pub fn marks_deletion(attributes: &Attributes) -> bool {
    let is = |name: &str, f: &dyn Fn(&str) -> bool| {
        attributes
            .get(name)
            .and_then(AttributeValue::as_str)
            .is_some_and(f)
    };
    is("event_type", &|e| e.ends_with(".delete.end"))
        || is("status", &|s| s.eq_ignore_ascii_case("deleted"))
        || is("state", &|s| s.eq_ignore_ascii_case("deleted"))
}

/// Meters resources against a meter set within a window.
#[derive(Debug)]
pub struct Metering<'a> {
    window: RatingWindow,
    by_raw_meter: HashMap<&'a str, Vec<&'a MeterDefinition>>,
}

/// A record selected by a definition, with its converted quantity.
struct Selected<'r> {
    record: &'r RawUsage,
    quantity: Result<Decimal, String>,
    group: BTreeMap<String, String>,
}

impl<'a> Metering<'a> {
    /// Prepares metering of `meters` over `window`.
    pub fn new(meters: &'a MeterSet, window: RatingWindow) -> Metering<'a> {
        let mut by_raw_meter: HashMap<&str, Vec<&MeterDefinition>> = HashMap::new();
        for m in &meters.meters {
            by_raw_meter
                .entry(m.records.meter.as_str())
                .or_default()
                .push(m);
        }
        Metering {
            window,
            by_raw_meter,
        }
    }

    /// The window being rated.
    pub fn window(&self) -> RatingWindow {
        self.window
    }

    /// Meters one resource. `records` are its records inside the window
    /// (any order, duplicates allowed); `carry` holds, per raw meter, its
    /// last record before the window, from which gauges and states carry
    /// in. Lines come out sorted by meter, group and period; the second
    /// value is how many records were dropped as copies of an id.
    pub fn meter_resource(
        &self,
        records: Vec<RawUsage>,
        carry: Vec<RawUsage>,
    ) -> (Vec<MeteredLine>, u64) {
        let read = records.len();
        let records = dedupe(records, &carry);
        let duplicates = (read - records.len()) as u64;
        let ended = records
            .iter()
            .chain(carry.iter())
            .filter(|r| marks_deletion(&r.attributes))
            .map(|r| r.time)
            .min();
        let mut raw_meters: BTreeSet<&str> = records.iter().map(|r| &*r.meter).collect();
        raw_meters.extend(carry.iter().map(|r| &*r.meter));
        let mut lines = Vec::new();
        for raw in raw_meters {
            let in_range: Vec<&RawUsage> = records.iter().filter(|r| &*r.meter == raw).collect();
            let carried = carry.iter().find(|r| &*r.meter == raw);
            match self.by_raw_meter.get(raw) {
                Some(defs) => {
                    for def in defs {
                        self.meter_definition(def, &in_range, carried, ended, &mut lines);
                    }
                }
                None => self.meter_undefined(raw, &in_range, &mut lines),
            }
        }
        lines.sort_by(|a, b| {
            (&a.meter, &a.group, a.period.start).cmp(&(&b.meter, &b.group, b.period.start))
        });
        (lines, duplicates)
    }

    fn meter_definition(
        &self,
        def: &MeterDefinition,
        in_range: &[&RawUsage],
        carried: Option<&RawUsage>,
        ended: Option<DateTime<Utc>>,
        out: &mut Vec<MeteredLine>,
    ) {
        let select = |r: &'_ RawUsage| -> bool {
            def.records.kind.is_none_or(|k| k == r.kind)
                && def
                    .records
                    .attributes
                    .iter()
                    .all(|(k, v)| r.attributes.get(k).is_some_and(|a| a.text() == *v))
        };
        let group_of = |r: &RawUsage| -> BTreeMap<String, String> {
            def.group_by
                .iter()
                .filter_map(|g| r.attributes.get(g).map(|v| (g.clone(), v.text())))
                .collect()
        };
        let convert = |r: &RawUsage| -> Result<Decimal, String> {
            def.conversion
                .apply(r.volume)
                .map(|q| def.mutate.apply(q))
                .map_err(|e| e.to_string())
        };
        let selected: Vec<Selected<'_>> = in_range
            .iter()
            .filter(|r| select(r))
            .map(|r| Selected {
                record: r,
                quantity: convert(r),
                group: group_of(r),
            })
            .collect();
        let carry = carried.filter(|r| select(r)).map(|r| Selected {
            record: r,
            quantity: convert(r),
            group: group_of(r),
        });
        match &def.aggregation {
            Aggregation::TimeWeighted => {
                self.time_weighted(def, &selected, carry.as_ref(), ended, out)
            }
            Aggregation::StateDuration {
                state_attribute,
                billable_states,
                split_by,
            } => self.state_duration(
                def,
                &selected,
                carry.as_ref(),
                (state_attribute, billable_states, split_by.as_deref()),
                out,
            ),
            simple => self.simple(&def.name, &def.unit, simple, &selected, out),
        }
    }

    /// The default definition: `sum` of raw volume per period, unit and
    /// attributes from the period's latest record.
    fn meter_undefined(&self, raw: &str, in_range: &[&RawUsage], out: &mut Vec<MeteredLine>) {
        let selected: Vec<Selected<'_>> = in_range
            .iter()
            .map(|r| Selected {
                record: r,
                quantity: Ok(r.volume),
                group: BTreeMap::new(),
            })
            .collect();
        self.simple(raw, "", &Aggregation::Sum, &selected, out);
    }

    fn simple(
        &self,
        name: &str,
        unit: &str,
        aggregation: &Aggregation,
        selected: &[Selected<'_>],
        out: &mut Vec<MeteredLine>,
    ) {
        #[derive(Default)]
        struct Acc<'r> {
            sum: Decimal,
            count: u64,
            min: Option<Decimal>,
            max: Option<Decimal>,
            latest: Option<(&'r RawUsage, Decimal)>,
            distinct: BTreeSet<String>,
            segments: BTreeSet<u32>,
            error: Option<String>,
        }
        let mut buckets: BTreeMap<(usize, &BTreeMap<String, String>), Acc<'_>> = BTreeMap::new();
        for s in selected {
            let acc = buckets
                .entry((self.window.index_of(s.record.time), &s.group))
                .or_default();
            acc.count += 1;
            acc.segments.insert(s.record.segment);
            let q = match &s.quantity {
                Ok(q) => *q,
                Err(e) => {
                    acc.error.get_or_insert_with(|| e.clone());
                    continue;
                }
            };
            match acc.sum.checked_add(q) {
                Some(sum) => acc.sum = sum,
                None => {
                    acc.error
                        .get_or_insert_with(|| format!("the sum overflows at record volume {q}"));
                }
            }
            acc.min = Some(acc.min.map_or(q, |m| m.min(q)));
            acc.max = Some(acc.max.map_or(q, |m| m.max(q)));
            if acc.latest.is_none_or(|(l, _)| later(s.record, l)) {
                acc.latest = Some((s.record, q));
            }
            if let Aggregation::UniqueCount { attribute } = aggregation
                && let Some(v) = s.record.attributes.get(attribute)
            {
                acc.distinct.insert(v.text());
            }
        }
        for ((index, group), acc) in buckets {
            let quantity = match aggregation {
                Aggregation::Sum => acc.sum,
                Aggregation::Count => Decimal::from(acc.count),
                Aggregation::Min => acc.min.unwrap_or_default(),
                Aggregation::Max => acc.max.unwrap_or_default(),
                Aggregation::Avg if acc.count > 0 => acc.sum / Decimal::from(acc.count),
                Aggregation::Latest => acc.latest.map(|(_, q)| q).unwrap_or_default(),
                Aggregation::UniqueCount { .. } => Decimal::from(acc.distinct.len()),
                _ => Decimal::ZERO,
            };
            let latest = acc.latest.map(|(r, _)| r).or_else(|| {
                selected
                    .iter()
                    .filter(|s| self.window.index_of(s.record.time) == index && s.group == *group)
                    .map(|s| s.record)
                    .next_back()
            });
            let unit = if unit.is_empty() {
                latest
                    .and_then(|r| r.unit.as_deref())
                    .unwrap_or_default()
                    .to_string()
            } else {
                unit.to_string()
            };
            out.push(MeteredLine {
                meter: name.to_string(),
                unit,
                period: self.window.period_at(index),
                group: group.clone(),
                quantity: if acc.error.is_some() {
                    Decimal::ZERO
                } else {
                    quantity
                },
                attributes: latest.map(|r| r.attributes.clone()).unwrap_or_default(),
                raw_count: acc.count,
                segments: acc.segments,
                error: acc.error,
            });
        }
    }

    fn time_weighted(
        &self,
        def: &MeterDefinition,
        selected: &[Selected<'_>],
        carry: Option<&Selected<'_>>,
        ended: Option<DateTime<Utc>>,
        out: &mut Vec<MeteredLine>,
    ) {
        let groups: BTreeSet<&BTreeMap<String, String>> =
            selected.iter().chain(carry).map(|s| &s.group).collect();
        for group in groups {
            // A sample of another group sets this group's value to 0: the
            // resource moved (a volume retyped), it is not in both at once.
            let value = |s: &Selected<'_>| -> Result<Decimal, String> {
                if s.group == *group {
                    s.quantity.clone()
                } else {
                    Ok(Decimal::ZERO)
                }
            };
            let mut current: Option<Decimal> = None;
            let mut attributes: Option<Arc<Attributes>> = None;
            if let Some(c) = carry {
                current = value(c).ok();
                if c.group == *group {
                    attributes = Some(c.record.attributes.clone());
                }
            }
            let mut next = 0;
            for index in 0..self.window.len() {
                let period = self.window.period_at(index);
                if ended.is_some_and(|e| e <= period.start) {
                    break;
                }
                let first = next;
                while next < selected.len() && selected[next].record.time < period.end {
                    next += 1;
                }
                let in_period = &selected[first..next];
                let mine: Vec<&Selected<'_>> =
                    in_period.iter().filter(|s| s.group == *group).collect();
                if mine.is_empty() && current.is_none_or(|v| v.is_zero()) && in_period.is_empty()
                {
                    continue;
                }
                let mut samples = Vec::with_capacity(in_period.len());
                let mut error = None;
                for s in in_period {
                    match value(s) {
                        Ok(v) => samples.push((s.record.time, v)),
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                    }
                }
                let quantity = time_weighted(&samples, current, ended, period);
                if let Some(last) = samples.last() {
                    current = Some(last.1);
                }
                if let Some(s) = mine.last() {
                    attributes = Some(s.record.attributes.clone());
                }
                if quantity.is_zero() && mine.is_empty() && error.is_none() {
                    continue;
                }
                out.push(MeteredLine {
                    meter: def.name.clone(),
                    unit: def.unit.clone(),
                    period,
                    group: group.clone(),
                    quantity: if error.is_some() {
                        Decimal::ZERO
                    } else {
                        quantity
                    },
                    attributes: attributes.clone().unwrap_or_default(),
                    raw_count: mine.len() as u64,
                    segments: mine.iter().map(|s| s.record.segment).collect(),
                    error,
                });
            }
        }
    }

    fn state_duration(
        &self,
        def: &MeterDefinition,
        selected: &[Selected<'_>],
        carry: Option<&Selected<'_>>,
        (state_attribute, billable, split_by): (&str, &BTreeSet<String>, Option<&str>),
        out: &mut Vec<MeteredLine>,
    ) {
        let change = |s: &Selected<'_>| -> Option<StateChange> {
            let state = s.record.attributes.get(state_attribute)?.text();
            Some(StateChange {
                time: s.record.time,
                state,
                split: split_by.and_then(|a| s.record.attributes.get(a).map(|v| v.text())),
            })
        };
        let changes: Vec<(StateChange, &Selected<'_>)> = selected
            .iter()
            .filter_map(|s| change(s).map(|c| (c, s)))
            .collect();
        let mut current: Option<StateChange> = carry.and_then(change);
        let mut current_attributes = carry.map(|c| c.record.attributes.clone());
        let mut next = 0;
        for index in 0..self.window.len() {
            let period = self.window.period_at(index);
            let first = next;
            while next < changes.len() && changes[next].0.time < period.end {
                next += 1;
            }
            let in_period = &changes[first..next];
            if in_period.is_empty() && current.as_ref().is_none_or(|c| !billable.contains(&c.state))
            {
                continue;
            }
            let period_changes: Vec<StateChange> =
                in_period.iter().map(|(c, _)| c.clone()).collect();
            let hours = state_duration(&period_changes, current.as_ref(), billable, period);
            let mut attributes_by_split: BTreeMap<Option<String>, Arc<Attributes>> =
                BTreeMap::new();
            if let (Some(c), Some(a)) = (&current, &current_attributes) {
                attributes_by_split.insert(c.split.clone(), a.clone());
            }
            for (c, s) in in_period {
                attributes_by_split.insert(c.split.clone(), s.record.attributes.clone());
            }
            for (split, quantity) in hours {
                if quantity.is_zero() {
                    continue;
                }
                let mine: Vec<&Selected<'_>> = in_period
                    .iter()
                    .filter(|(c, _)| c.split == split)
                    .map(|(_, s)| *s)
                    .collect();
                let group = match (split_by, &split) {
                    (Some(name), Some(value)) => BTreeMap::from([(name.to_string(), value.clone())]),
                    _ => BTreeMap::new(),
                };
                out.push(MeteredLine {
                    meter: def.name.clone(),
                    unit: def.unit.clone(),
                    period,
                    group,
                    quantity,
                    attributes: attributes_by_split.get(&split).cloned().unwrap_or_default(),
                    raw_count: mine.len() as u64,
                    segments: mine.iter().map(|s| s.record.segment).collect(),
                    error: None,
                });
            }
            if let Some((c, s)) = in_period.last() {
                current = Some(c.clone());
                current_attributes = Some(s.record.attributes.clone());
            }
        }
    }
}

/// Whether `a` comes after `b` in a resource's history: later event time,
/// then later receipt, then the larger key, so that "latest" never depends
/// on the order records were read in.
fn later(a: &RawUsage, b: &RawUsage) -> bool {
    (a.time, a.received_at, a.key) > (b.time, b.received_at, b.key)
}

/// Keeps the earliest-received copy of each key (a carried record counts as
/// a copy too), then orders by meter and time.
fn dedupe(mut records: Vec<RawUsage>, carry: &[RawUsage]) -> Vec<RawUsage> {
    records.sort_by(|a, b| {
        (a.key, a.received_at, a.time, &a.meter).cmp(&(b.key, b.received_at, b.time, &b.meter))
    });
    records.dedup_by(|later_copy, first| later_copy.key == first.key);
    if !carry.is_empty() {
        records.retain(|r| {
            !carry
                .iter()
                .any(|c| c.key == r.key && c.received_at <= r.received_at)
        });
    }
    records.sort_by(|a, b| {
        (&a.meter, a.time, a.received_at, a.key).cmp(&(&b.meter, b.time, b.received_at, b.key))
    });
    records
}
