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
use smallvec::SmallVec;
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

/// A duration that is not written `<n>s`, `<n>m`, `<n>h` or `<n>d`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a duration: write 90s, 15m, 1h or 2d")]
pub struct DurationError(pub String);

/// Parses the durations of rating settings and requests: `90s`, `15m`,
/// `1h`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().map_err(|_| DurationError(text.to_string()))?;
    match unit {
        "s" => Ok(Duration::seconds(n)),
        "m" => Ok(Duration::minutes(n)),
        "h" => Ok(Duration::hours(n)),
        "d" => Ok(Duration::days(n)),
        _ => Err(DurationError(text.to_string())),
    }
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
        ((t - self.from).num_microseconds().unwrap_or(0)
            / self.period.num_microseconds().unwrap_or(1)) as usize
    }

    /// Whether `t` is inside the window.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        t >= self.from && t < self.to
    }
}

/// Group-by attribute values of a line, by attribute name.
pub type Group = BTreeMap<String, String>;

/// The segments a line's records were read from: indices into the run's
/// segment list, ascending, each once. Most lines come from one or two
/// segments, so they are held inline.
pub type Segments = SmallVec<[u32; 2]>;

/// Adds `segment` to `segments`, keeping them ascending and unique.
fn add_segment(segments: &mut Segments, segment: u32) {
    if let Err(at) = segments.binary_search(&segment) {
        segments.insert(at, segment);
    }
}

/// One resource's usage of one rated meter in one period, before pricing.
///
/// Text is shared (`Arc`) rather than owned: a month of a large cloud is
/// tens of millions of lines, and a string per field per line was a large
/// part of the rating job's time.
#[derive(Debug, Clone, PartialEq)]
pub struct MeteredLine {
    /// The rated meter.
    pub meter: Arc<str>,
    /// Its unit.
    pub unit: Arc<str>,
    /// The rating period.
    pub period: Period,
    /// Group-by attribute values.
    pub group: Arc<Group>,
    /// Aggregated quantity, full precision.
    pub quantity: Decimal,
    /// Attributes of the latest record behind the line.
    pub attributes: Arc<Attributes>,
    /// Records of the period that went into the line.
    pub raw_count: u64,
    /// Their segments (indices into the run's segment list).
    pub segments: Segments,
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
    by_raw_meter: HashMap<&'a str, Vec<Definition<'a>>>,
    /// Shared by every line without group-by values.
    no_group: Arc<Group>,
    /// The unit of lines whose records name none.
    no_unit: Arc<str>,
}

/// A meter definition with the name and unit its lines share.
#[derive(Debug)]
struct Definition<'a> {
    def: &'a MeterDefinition,
    name: Arc<str>,
    unit: Arc<str>,
}

/// A record selected by a definition, with its converted quantity.
struct Selected<'r> {
    record: &'r RawUsage,
    quantity: Result<Decimal, String>,
    group: Arc<Group>,
}

impl<'a> Metering<'a> {
    /// Prepares metering of `meters` over `window`.
    pub fn new(meters: &'a MeterSet, window: RatingWindow) -> Metering<'a> {
        let mut by_raw_meter: HashMap<&str, Vec<Definition<'a>>> = HashMap::new();
        for m in &meters.meters {
            by_raw_meter
                .entry(m.records.meter.as_str())
                .or_default()
                .push(Definition {
                    def: m,
                    name: Arc::from(m.name.as_str()),
                    unit: Arc::from(m.unit.as_str()),
                });
        }
        Metering {
            window,
            by_raw_meter,
            no_group: Arc::new(Group::new()),
            no_unit: Arc::from(""),
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
        let (lines, duplicates, _) = self.meter_resource_until(records, carry);
        (lines, duplicates)
    }

    /// [`Metering::meter_resource`], also saying when the resource was
    /// deleted, if its records say so (the rating job then carries nothing
    /// of it into the next range).
    pub fn meter_resource_until(
        &self,
        records: Vec<RawUsage>,
        carry: Vec<RawUsage>,
    ) -> (Vec<MeteredLine>, u64, Option<DateTime<Utc>>) {
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
            // `dedupe` ordered the records by meter.
            let first = records.partition_point(|r| &*r.meter < raw);
            let end = records.partition_point(|r| &*r.meter <= raw);
            let in_range: Vec<&RawUsage> = records[first..end].iter().collect();
            let carried = carry.iter().find(|r| &*r.meter == raw);
            match self.by_raw_meter.get(raw) {
                Some(defs) => {
                    for def in defs {
                        self.meter_definition(def, &in_range, carried, ended, &mut lines);
                    }
                }
                None => self.meter_undefined(&in_range, &mut lines),
            }
        }
        lines.sort_by(|a, b| {
            (&a.meter, &a.group, a.period.start).cmp(&(&b.meter, &b.group, b.period.start))
        });
        (lines, duplicates, ended)
    }

    fn meter_definition(
        &self,
        definition: &Definition<'_>,
        in_range: &[&RawUsage],
        carried: Option<&RawUsage>,
        ended: Option<DateTime<Utc>>,
        out: &mut Vec<MeteredLine>,
    ) {
        let def = definition.def;
        let select = |r: &'_ RawUsage| -> bool {
            def.records.kind.is_none_or(|k| k == r.kind)
                && def
                    .records
                    .attributes
                    .iter()
                    .all(|(k, v)| r.attributes.get(k).is_some_and(|a| a.text() == *v))
        };
        // A resource's records mostly share one attribute set (`Arc`), so
        // its group is built once per set, not once per record.
        let mut last_group: Option<(Arc<Attributes>, Arc<Group>)> = None;
        let mut group_of = |r: &RawUsage| -> Arc<Group> {
            if def.group_by.is_empty() {
                return self.no_group.clone();
            }
            if let Some((a, g)) = &last_group
                && Arc::ptr_eq(a, &r.attributes)
            {
                return g.clone();
            }
            let group: Arc<Group> = Arc::new(
                def.group_by
                    .iter()
                    .filter_map(|g| r.attributes.get(g).map(|v| (g.clone(), v.text())))
                    .collect(),
            );
            last_group = Some((r.attributes.clone(), group.clone()));
            group
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
                self.time_weighted(definition, &selected, carry.as_ref(), ended, out)
            }
            Aggregation::StateDuration {
                state_attribute,
                billable_states,
                split_by,
            } => self.state_duration(
                definition,
                &selected,
                carry.as_ref(),
                (state_attribute, billable_states, split_by.as_deref()),
                out,
            ),
            simple => self.simple(
                &definition.name,
                Some(&definition.unit),
                simple,
                &selected,
                out,
            ),
        }
    }

    /// The default definition: `sum` of raw volume per period, unit and
    /// attributes from the period's latest record.
    fn meter_undefined(&self, in_range: &[&RawUsage], out: &mut Vec<MeteredLine>) {
        let selected: Vec<Selected<'_>> = in_range
            .iter()
            .map(|r| Selected {
                record: r,
                quantity: Ok(r.volume),
                group: self.no_group.clone(),
            })
            .collect();
        // The raw meter's name is shared with its records.
        let Some(first) = in_range.first() else {
            return;
        };
        self.simple(&first.meter, None, &Aggregation::Sum, &selected, out);
    }

    /// `unit`: the definition's, or `None` to take the latest record's.
    fn simple(
        &self,
        name: &Arc<str>,
        unit: Option<&Arc<str>>,
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
            segments: Segments,
            error: Option<String>,
        }
        let mut buckets: BTreeMap<(usize, &Arc<Group>), Acc<'_>> = BTreeMap::new();
        for s in selected {
            let acc = buckets
                .entry((self.window.index_of(s.record.time), &s.group))
                .or_default();
            acc.count += 1;
            add_segment(&mut acc.segments, s.record.segment);
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
            let unit = match unit {
                Some(u) => u.clone(),
                None => latest
                    .and_then(|r| r.unit.clone())
                    .unwrap_or_else(|| self.no_unit.clone()),
            };
            out.push(MeteredLine {
                meter: name.clone(),
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
        def: &Definition<'_>,
        selected: &[Selected<'_>],
        carry: Option<&Selected<'_>>,
        ended: Option<DateTime<Utc>>,
        out: &mut Vec<MeteredLine>,
    ) {
        let groups: BTreeSet<&Arc<Group>> =
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
            let mut samples: Vec<(DateTime<Utc>, Decimal)> = Vec::new();
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
                let mut raw_count = 0u64;
                let mut last_mine = None;
                let mut segments = Segments::new();
                for s in in_period.iter().filter(|s| s.group == *group) {
                    raw_count += 1;
                    last_mine = Some(s);
                    add_segment(&mut segments, s.record.segment);
                }
                if raw_count == 0 && current.is_none_or(|v| v.is_zero()) && in_period.is_empty() {
                    continue;
                }
                samples.clear();
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
                if let Some(s) = last_mine {
                    attributes = Some(s.record.attributes.clone());
                }
                if quantity.is_zero() && raw_count == 0 && error.is_none() {
                    continue;
                }
                out.push(MeteredLine {
                    meter: def.name.clone(),
                    unit: def.unit.clone(),
                    period,
                    group: (*group).clone(),
                    quantity: if error.is_some() {
                        Decimal::ZERO
                    } else {
                        quantity
                    },
                    attributes: attributes.clone().unwrap_or_default(),
                    raw_count,
                    segments,
                    error,
                });
            }
        }
    }

    fn state_duration(
        &self,
        def: &Definition<'_>,
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
        // One group per split value for the whole resource, not per line.
        let mut groups: BTreeMap<Option<String>, Arc<Group>> = BTreeMap::new();
        let mut next = 0;
        for index in 0..self.window.len() {
            let period = self.window.period_at(index);
            let first = next;
            while next < changes.len() && changes[next].0.time < period.end {
                next += 1;
            }
            let in_period = &changes[first..next];
            if in_period.is_empty()
                && current
                    .as_ref()
                    .is_none_or(|c| !billable.contains(&c.state))
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
                let group = match groups.get(&split) {
                    Some(g) => g.clone(),
                    None => {
                        let g = match (split_by, &split) {
                            (Some(name), Some(value)) => {
                                Arc::new(Group::from([(name.to_string(), value.clone())]))
                            }
                            _ => self.no_group.clone(),
                        };
                        groups.insert(split.clone(), g.clone());
                        g
                    }
                };
                let mut segments = Segments::new();
                for s in &mine {
                    add_segment(&mut segments, s.record.segment);
                }
                out.push(MeteredLine {
                    meter: def.name.clone(),
                    unit: def.unit.clone(),
                    period,
                    group,
                    quantity,
                    attributes: attributes_by_split.get(&split).cloned().unwrap_or_default(),
                    raw_count: mine.len() as u64,
                    segments,
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
pub(crate) fn later(a: &RawUsage, b: &RawUsage) -> bool {
    (a.time, a.received_at, a.key) > (b.time, b.received_at, b.key)
}

/// Keeps the earliest-received copy of each key (a carried record counts as
/// a copy too), then orders by meter and time.
fn dedupe(records: Vec<RawUsage>, carry: &[RawUsage]) -> Vec<RawUsage> {
    // Works on indices: records are ~100 bytes, and sorting them by value
    // (twice, as a first version did) moved more memory than anything else
    // in the rating job.
    let rank = |r: &RawUsage| (r.received_at, r.time, r.meter.clone());
    let mut best: hashbrown::HashMap<u128, u32> = hashbrown::HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        match best.entry(r.key) {
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(i as u32);
            }
            hashbrown::hash_map::Entry::Occupied(mut o) => {
                if rank(r) < rank(&records[*o.get() as usize]) {
                    o.insert(i as u32);
                }
            }
        }
    }
    let mut keep: Vec<u32> = if best.len() == records.len() {
        (0..records.len() as u32).collect()
    } else {
        best.into_values().collect()
    };
    if !carry.is_empty() {
        keep.retain(|&i| {
            let r = &records[i as usize];
            !carry
                .iter()
                .any(|c| c.key == r.key && c.received_at <= r.received_at)
        });
    }
    // Keys are unique now, so this order is total and an unstable sort is
    // deterministic.
    keep.sort_unstable_by(|&a, &b| {
        let (a, b) = (&records[a as usize], &records[b as usize]);
        // The rating job shares one `Arc` per meter name: the same
        // pointer is the same name, without comparing the text.
        let meter = if Arc::ptr_eq(&a.meter, &b.meter) {
            std::cmp::Ordering::Equal
        } else {
            a.meter.cmp(&b.meter)
        };
        meter.then_with(|| (a.time, a.received_at, a.key).cmp(&(b.time, b.received_at, b.key)))
    });
    let mut slots: Vec<Option<RawUsage>> = records.into_iter().map(Some).collect();
    keep.into_iter()
        .map(|i| slots[i as usize].take().expect("each index is kept once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap()
            + Duration::hours(i64::from(h))
            + Duration::minutes(i64::from(m))
    }

    fn window(hours: u32) -> RatingWindow {
        RatingWindow::new(at(0, 0), at(hours, 0), Duration::hours(1)).unwrap()
    }

    fn attrs(json: &str) -> Arc<Attributes> {
        Arc::new(serde_json::from_str(json).unwrap())
    }

    fn rec(meter: &str, time: DateTime<Utc>, volume: &str, a: &str, key: u128) -> RawUsage {
        RawUsage {
            meter: Arc::from(meter),
            time,
            received_at: time,
            key,
            kind: MeterKind::Gauge,
            volume: d(volume),
            unit: None,
            attributes: attrs(a),
            segment: 0,
        }
    }

    fn set(toml: &str) -> MeterSet {
        MeterSet::from_toml(toml).unwrap()
    }

    fn quantities(lines: &[MeteredLine]) -> Vec<(String, u32, String)> {
        lines
            .iter()
            .map(|l| {
                (
                    l.group.values().cloned().collect::<Vec<_>>().join(","),
                    (l.period.start - at(0, 0)).num_hours() as u32,
                    l.quantity.normalize().to_string(),
                )
            })
            .collect()
    }

    const SIMPLE: &str = r#"
[[meters]]
name = "m.sum"
unit = "u"
records = { meter = "m" }
aggregation = { type = "sum" }
[[meters]]
name = "m.count"
unit = "u"
records = { meter = "m" }
aggregation = { type = "count" }
[[meters]]
name = "m.min"
unit = "u"
records = { meter = "m" }
aggregation = { type = "min" }
[[meters]]
name = "m.max"
unit = "u"
records = { meter = "m" }
aggregation = { type = "max" }
[[meters]]
name = "m.avg"
unit = "u"
records = { meter = "m" }
aggregation = { type = "avg" }
[[meters]]
name = "m.latest"
unit = "u"
records = { meter = "m" }
aggregation = { type = "latest" }
[[meters]]
name = "m.users"
unit = "u"
records = { meter = "m" }
aggregation = { type = "unique_count", attribute = "user" }
[[meters]]
name = "m.kib"
unit = "KiB"
records = { meter = "m", attributes = { zone = "a" } }
aggregation = { type = "sum" }
factor = "1/1024"
offset = "1"
mutate = "CEIL"
"#;

    #[test]
    fn simple_aggregations_worked_by_hand() {
        let meters = set(SIMPLE);
        let m = Metering::new(&meters, window(2));
        // Hour 0: 1024 (zone a, user x), 3072 (zone b, user y), 2048 (zone a, user x, latest).
        // Hour 1: 10 (zone a, user z).
        let records = vec![
            rec("m", at(0, 5), "1024", r#"{"zone":"a","user":"x"}"#, 1),
            rec("m", at(0, 50), "2048", r#"{"zone":"a","user":"x"}"#, 2),
            rec("m", at(0, 20), "3072", r#"{"zone":"b","user":"y"}"#, 3),
            rec("m", at(1, 0), "10", r#"{"zone":"a","user":"z"}"#, 4),
        ];
        let (lines, dups) = m.meter_resource(records, vec![]);
        assert_eq!(dups, 0);
        let by = |name: &str| {
            quantities(
                &lines
                    .iter()
                    .filter(|l| &*l.meter == name)
                    .cloned()
                    .collect::<Vec<_>>(),
            )
            .into_iter()
            .map(|(_, h, q)| (h, q))
            .collect::<Vec<_>>()
        };
        let s = |v: &[(u32, &str)]| {
            v.iter()
                .map(|(h, q)| (*h, q.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(by("m.sum"), s(&[(0, "6144"), (1, "10")]));
        assert_eq!(by("m.count"), s(&[(0, "3"), (1, "1")]));
        assert_eq!(by("m.min"), s(&[(0, "1024"), (1, "10")]));
        assert_eq!(by("m.max"), s(&[(0, "3072"), (1, "10")]));
        assert_eq!(by("m.avg"), s(&[(0, "2048"), (1, "10")]));
        // Latest is the 00:50 record, whatever the order given.
        assert_eq!(by("m.latest"), s(&[(0, "2048"), (1, "10")]));
        assert_eq!(by("m.users"), s(&[(0, "2"), (1, "1")]));
        // Zone a only; each record: ceil(v / 1024 + 1): 2 + 3 = 5; hour 1: ceil(10/1024 + 1) = 2.
        assert_eq!(by("m.kib"), s(&[(0, "5"), (1, "2")]));
        let latest = lines.iter().find(|l| &*l.meter == "m.latest").unwrap();
        assert_eq!(latest.raw_count, 3);
        assert_eq!(latest.attributes.get("user").unwrap().text(), "x");
    }

    #[test]
    fn records_of_a_meter_without_definition_are_summed_with_the_latest_attributes() {
        let meters = set(SIMPLE);
        let m = Metering::new(&meters, window(1));
        let mut a = rec(
            "network.incoming.bytes",
            at(0, 10),
            "100",
            r#"{"nic":"a"}"#,
            1,
        );
        a.unit = Some(Arc::from("B"));
        let b = rec(
            "network.incoming.bytes",
            at(0, 40),
            "50",
            r#"{"nic":"b"}"#,
            2,
        );
        let (lines, _) = m.meter_resource(vec![b, a], vec![]);
        assert_eq!(lines.len(), 1);
        assert_eq!(&*lines[0].meter, "network.incoming.bytes");
        assert_eq!(lines[0].quantity, d("150"));
        assert_eq!(lines[0].attributes.get("nic").unwrap().text(), "b");
    }

    const GAUGES: &str = r#"
[[meters]]
name = "volume.gib_hours"
unit = "GiB-hour"
records = { meter = "volume.size" }
aggregation = { type = "time_weighted" }
group_by = ["volume_type"]
[[meters]]
name = "vcpu.hours"
unit = "vCPU-hour"
records = { meter = "vcpus" }
aggregation = { type = "time_weighted" }
[[meters]]
name = "instance.hours"
unit = "hour"
records = { meter = "instance" }
aggregation = { type = "state_duration", state_attribute = "status", billable_states = ["active"], split_by = "flavor_name" }
group_by = ["flavor_name"]
"#;

    #[test]
    fn time_weighted_carries_across_hours_resizes_mid_hour_and_stops_at_deletion() {
        let meters = set(GAUGES);
        let m = Metering::new(&meters, window(4));
        // 10 GiB carried in from before the range; resized to 20 at 01:30;
        // retyped to "ssd" at 02:00 (same size); deleted at 03:15.
        let carry = vec![rec(
            "volume.size",
            at(0, 0) - Duration::hours(5),
            "10",
            r#"{"volume_type":"hdd"}"#,
            9,
        )];
        let records = vec![
            rec(
                "volume.size",
                at(1, 30),
                "20",
                r#"{"volume_type":"hdd"}"#,
                1,
            ),
            rec("volume.size", at(2, 0), "20", r#"{"volume_type":"ssd"}"#, 2),
            rec(
                "volume.size",
                at(3, 15),
                "20",
                r#"{"volume_type":"ssd","event_type":"volume.delete.end"}"#,
                3,
            ),
        ];
        let (lines, _) = m.meter_resource(records, carry);
        assert_eq!(
            quantities(&lines),
            vec![
                // hdd: hour 0 = 10; hour 1 = 10 × 0.5 + 20 × 0.5 = 15; then 0 (retyped).
                ("hdd".into(), 0, "10".into()),
                ("hdd".into(), 1, "15".into()),
                // ssd: hour 2 = 20; hour 3 = 20 × 0.25 = 5; nothing after deletion.
                ("ssd".into(), 2, "20".into()),
                ("ssd".into(), 3, "5".into()),
            ]
        );
    }

    #[test]
    fn a_deletion_on_another_meter_ends_a_gauge_and_states_split_by_flavor() {
        let meters = set(GAUGES);
        let m = Metering::new(&meters, window(3));
        // Created before the range (carried), resized from small to large at
        // 00:40, shut off 01:00–01:30, deleted at 02:20. vCPUs: 1 then 4.
        let carry = vec![
            rec(
                "instance",
                at(0, 0) - Duration::days(1),
                "1",
                r#"{"status":"active","flavor_name":"small"}"#,
                10,
            ),
            rec("vcpus", at(0, 0) - Duration::hours(1), "1", "{}", 11),
        ];
        let records = vec![
            rec(
                "instance",
                at(0, 40),
                "1",
                r#"{"status":"active","flavor_name":"large"}"#,
                1,
            ),
            rec("vcpus", at(0, 40), "4", "{}", 2),
            rec(
                "instance",
                at(1, 0),
                "1",
                r#"{"status":"shutoff","flavor_name":"large"}"#,
                3,
            ),
            rec(
                "instance",
                at(1, 30),
                "1",
                r#"{"status":"active","flavor_name":"large"}"#,
                4,
            ),
            rec(
                "instance",
                at(2, 20),
                "0",
                r#"{"status":"deleted","flavor_name":"large","event_type":"compute.instance.delete.end"}"#,
                5,
            ),
        ];
        let (lines, _) = m.meter_resource(records, carry);
        let hours: Vec<_> = quantities(
            &lines
                .iter()
                .filter(|l| &*l.meter == "instance.hours")
                .cloned()
                .collect::<Vec<_>>(),
        );
        let third = (Decimal::from(20) / Decimal::from(60))
            .normalize()
            .to_string();
        assert_eq!(
            hours,
            vec![
                // 00:40–01:00, 01:30–02:00, 02:00–02:20 on large; 00:00–00:40 on small.
                ("large".into(), 0, third.clone()),
                ("large".into(), 1, "0.5".into()),
                ("large".into(), 2, third),
                (
                    "small".into(),
                    0,
                    (Decimal::from(40) / Decimal::from(60))
                        .normalize()
                        .to_string()
                ),
            ]
        );
        let vcpu: Vec<_> = quantities(
            &lines
                .iter()
                .filter(|l| &*l.meter == "vcpu.hours")
                .cloned()
                .collect::<Vec<_>>(),
        );
        // 1 × 40/60 + 4 × 20/60 = 2; hour 1 = 4; hour 2 = 4 × 20/60 (deleted at 02:20).
        assert_eq!(vcpu[0].2, "2");
        assert_eq!(vcpu[1].2, "4");
        assert_eq!(
            vcpu[2].2,
            // Seconds are summed first and divided once: 4800 / 3600.
            (Decimal::from(4 * 1200) / Decimal::from(3600))
                .normalize()
                .to_string()
        );
        assert_eq!(vcpu.len(), 3);
    }

    #[test]
    fn the_earliest_received_copy_of_an_id_counts_once() {
        let meters = set(SIMPLE);
        let m = Metering::new(&meters, window(1));
        let first = rec("m", at(0, 10), "5", r#"{"zone":"a"}"#, 7);
        let mut late_copy = rec("m", at(0, 20), "500", r#"{"zone":"a"}"#, 7);
        late_copy.received_at = at(0, 59);
        let (lines, dups) = m.meter_resource(vec![late_copy, first.clone(), first], vec![]);
        assert_eq!(dups, 2);
        let sum = lines.iter().find(|l| &*l.meter == "m.sum").unwrap();
        assert_eq!(sum.quantity, d("5"));
    }

    #[test]
    fn windows_refuse_unaligned_bounds_and_odd_periods() {
        assert!(matches!(
            RatingWindow::new(at(0, 30), at(2, 0), Duration::hours(1)),
            Err(WindowError::Unaligned { .. })
        ));
        assert!(matches!(
            RatingWindow::new(at(0, 0), at(2, 0), Duration::minutes(7)),
            Err(WindowError::BadPeriod(420))
        ));
        assert!(matches!(
            RatingWindow::new(at(2, 0), at(2, 0), Duration::hours(1)),
            Err(WindowError::Empty { .. })
        ));
        assert_eq!(window(24).len(), 24);
    }

    #[test]
    fn durations_are_written_with_a_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::seconds(90)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::days(2)));
        assert_eq!(parse_duration("15m"), Ok(Duration::minutes(15)));
        assert_eq!(parse_duration("1h"), Ok(Duration::hours(1)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    proptest! {
        /// Shuffling records and delivering some twice changes no line.
        #[test]
        fn shuffling_and_duplicating_changes_nothing(
            seed in any::<u64>(),
            dup_mask in any::<u32>(),
        ) {
            let meters = set(GAUGES);
            let m = Metering::new(&meters, window(3));
            let mut records = Vec::new();
            for i in 0..12u32 {
                let t = at(0, 0) + Duration::minutes(i64::from(i * 15));
                records.push(rec("vcpus", t, &(1 + i % 3).to_string(), "{}", u128::from(i)));
                let status = if i % 4 == 3 { "shutoff" } else { "active" };
                records.push(rec(
                    "instance",
                    t,
                    "1",
                    &format!(r#"{{"status":"{status}","flavor_name":"f{}"}}"#, i % 2),
                    u128::from(100 + i),
                ));
            }
            let (expected, _) = m.meter_resource(records.clone(), vec![]);
            let mut shuffled = records.clone();
            for (i, r) in records.iter().enumerate() {
                if dup_mask & (1 << (i % 32)) != 0 {
                    shuffled.push(r.clone());
                }
            }
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let (again, _) = m.meter_resource(shuffled, vec![]);
            prop_assert_eq!(again, expected);
        }
    }
}
