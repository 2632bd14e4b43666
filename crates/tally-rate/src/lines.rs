//! Rated lines as Arrow batches and Parquet files.
//!
//! Quantities and amounts are stored as decimal *text*, not `Decimal128`: a
//! rated line keeps full precision (an hour count like 1/3 has 28
//! significant digits), and no fixed Arrow scale holds every value
//! `rust_decimal` can produce without rounding, which only invoices may do.
//! The run id is deliberately not a column: the files of two runs over the
//! same data and plan are then byte-identical, which is how determinism is
//! tested, and the catalog says which run a file belongs to.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{Attributes, RatedLine};
use tally_price::RuleName;

/// Errors reading rated-line batches.
#[derive(Debug, thiserror::Error)]
pub enum LinesError {
    /// A column is missing or of the wrong type.
    #[error("rated-line file is not in Tally's format: {0}")]
    Format(String),
    /// Arrow refused the batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The Arrow schema of rated-line files.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("project_id", false),
        text("resource_id", false),
        text("meter", false),
        text("group", false),
        Field::new("period_start", ts.clone(), false),
        Field::new("period_end", ts, false),
        text("quantity", false),
        text("unit", false),
        text("unit_price", true),
        text("amount", false),
        text("currency", false),
        text("plan_id", false),
        Field::new("plan_version", DataType::UInt32, false),
        text("rule", false),
        Field::new("raw_count", DataType::UInt64, false),
        text("segments", false),
        text("attributes", false),
        text("error", true),
    ]))
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Lines → one batch, in the given order.
pub fn to_batch(lines: &[RatedLine]) -> Result<RecordBatch, LinesError> {
    let mut b = LineBatchBuilder::with_capacity(lines.len());
    for l in lines {
        b.append(&LineRow::of(l));
    }
    b.finish()
}

impl<'a> LineRow<'a> {
    /// A [`RatedLine`] as a row of the line file.
    pub fn of(l: &'a RatedLine) -> LineRow<'a> {
        LineRow {
            project_id: &l.project_id,
            resource_id: &l.resource_id,
            meter: &l.meter,
            group: &l.group,
            period_start: l.period_start,
            period_end: l.period_end,
            quantity: l.quantity,
            unit: &l.unit,
            unit_price: l.unit_price,
            amount: l.amount,
            currency: &l.currency,
            plan_id: &l.plan_id,
            plan_version: l.plan_version,
            rule: RuleText::Text(&l.rule),
            raw_count: l.raw_count,
            segments: SegmentNames::Paths(&l.segments),
            attributes: &l.attributes,
            error: l.error.as_deref(),
        }
    }
}

/// One line's fields as the line file stores them, borrowed from whatever
/// holds the line: a [`RatedLine`], or the rating job's priced lines, which
/// are never turned into `RatedLine`s (tens of millions of them would cost
/// a dozen strings each).
#[derive(Debug, Clone, Copy)]
pub struct LineRow<'a> {
    /// See [`RatedLine::project_id`].
    pub project_id: &'a str,
    /// See [`RatedLine::resource_id`].
    pub resource_id: &'a str,
    /// See [`RatedLine::meter`].
    pub meter: &'a str,
    /// See [`RatedLine::group`].
    pub group: &'a BTreeMap<String, String>,
    /// See [`RatedLine::period_start`].
    pub period_start: DateTime<Utc>,
    /// See [`RatedLine::period_end`].
    pub period_end: DateTime<Utc>,
    /// See [`RatedLine::quantity`].
    pub quantity: Decimal,
    /// See [`RatedLine::unit`].
    pub unit: &'a str,
    /// See [`RatedLine::unit_price`].
    pub unit_price: Option<Decimal>,
    /// See [`RatedLine::amount`].
    pub amount: Decimal,
    /// See [`RatedLine::currency`].
    pub currency: &'a str,
    /// See [`RatedLine::plan_id`].
    pub plan_id: &'a str,
    /// See [`RatedLine::plan_version`].
    pub plan_version: u32,
    /// See [`RatedLine::rule`].
    pub rule: RuleText<'a>,
    /// See [`RatedLine::raw_count`].
    pub raw_count: u64,
    /// See [`RatedLine::segments`].
    pub segments: SegmentNames<'a>,
    /// See [`RatedLine::attributes`].
    pub attributes: &'a Arc<Attributes>,
    /// See [`RatedLine::error`].
    pub error: Option<&'a str>,
}

/// The rule that priced a line: its name, or what names it.
#[derive(Debug, Clone, Copy)]
pub enum RuleText<'a> {
    /// Written out already.
    Text(&'a str),
    /// Written when the line is.
    Name(RuleName<'a>),
}

impl std::fmt::Display for RuleText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleText::Text(t) => f.write_str(t),
            RuleText::Name(n) => n.fmt(f),
        }
    }
}

/// The segments behind a line: their paths, or indices into the run's
/// segment list (an index past its end names nothing).
#[derive(Debug, Clone, Copy)]
pub enum SegmentNames<'a> {
    /// Paths.
    Paths(&'a [String]),
    /// Indices into `paths`.
    Indices {
        /// The line's segment indices.
        of: &'a [u32],
        /// The run's segment list.
        paths: &'a [String],
    },
}

impl<'a> SegmentNames<'a> {
    /// The segments' paths, in order.
    pub fn paths(self) -> impl Iterator<Item = &'a String> {
        let (listed, indexed) = match self {
            SegmentNames::Paths(paths) => (Some(paths.iter()), None),
            SegmentNames::Indices { of, paths } => (
                None,
                Some(of.iter().filter_map(move |&i| paths.get(i as usize))),
            ),
        };
        listed
            .into_iter()
            .flatten()
            .chain(indexed.into_iter().flatten())
    }
}

/// Writes `paths` joined by commas into the row `b` is building.
fn comma_separated<'p>(b: &mut StringBuilder, paths: impl Iterator<Item = &'p String>) {
    for (n, path) in paths.enumerate() {
        if n > 0 {
            let _ = b.write_str(",");
        }
        let _ = b.write_str(path);
    }
}

/// Builds batches of the line file's schema one row at a time, writing
/// text straight into the Arrow buffers.
pub struct LineBatchBuilder {
    project_id: StringBuilder,
    resource_id: StringBuilder,
    meter: StringBuilder,
    group: StringBuilder,
    period_start: Vec<i64>,
    period_end: Vec<i64>,
    quantity: StringBuilder,
    unit: StringBuilder,
    unit_price: StringBuilder,
    amount: StringBuilder,
    currency: StringBuilder,
    plan_id: StringBuilder,
    plan_version: Vec<u32>,
    rule: StringBuilder,
    raw_count: Vec<u64>,
    segments: StringBuilder,
    attributes: StringBuilder,
    error: StringBuilder,
    /// Consecutive lines mostly repeat their group and attributes: the last
    /// ones and their JSON, so each is serialized once per run of equals.
    /// The attributes are held (not just their address) so that a freed
    /// and reused address cannot be mistaken for the same set.
    last_group: Option<(BTreeMap<String, String>, String)>,
    last_attributes: Option<(Arc<Attributes>, String)>,
    /// The same for the decimal columns: consecutive lines of a meter
    /// mostly repeat their quantity, price and amount, and formatting a
    /// `Decimal` costs more than comparing two.
    last_quantity: DecimalText,
    last_unit_price: DecimalText,
    last_amount: DecimalText,
}

/// The last decimal a column received and its text (`normalize`d, so equal
/// values, whatever their scale, have one text).
#[derive(Default)]
struct DecimalText(Option<(Decimal, String)>);

impl DecimalText {
    /// Appends `d` as a row of `b`.
    fn append(&mut self, b: &mut StringBuilder, d: Decimal) {
        match &self.0 {
            Some((last, text)) if *last == d => b.append_value(text),
            _ => {
                let text = d.normalize().to_string();
                b.append_value(&text);
                self.0 = Some((d, text));
            }
        }
    }
}

impl LineBatchBuilder {
    /// A builder with room for `rows` rows.
    pub fn with_capacity(rows: usize) -> LineBatchBuilder {
        let text = |bytes: usize| StringBuilder::with_capacity(rows, rows * bytes);
        LineBatchBuilder {
            project_id: text(32),
            resource_id: text(36),
            meter: text(16),
            group: text(8),
            period_start: Vec::with_capacity(rows),
            period_end: Vec::with_capacity(rows),
            quantity: text(8),
            unit: text(4),
            unit_price: text(8),
            amount: text(12),
            currency: text(3),
            plan_id: text(8),
            plan_version: Vec::with_capacity(rows),
            rule: text(8),
            raw_count: Vec::with_capacity(rows),
            segments: text(48),
            attributes: text(128),
            error: text(0),
            last_group: None,
            last_attributes: None,
            last_quantity: DecimalText::default(),
            last_unit_price: DecimalText::default(),
            last_amount: DecimalText::default(),
        }
    }

    /// Rows appended since the last batch.
    pub fn len(&self) -> usize {
        self.plan_version.len()
    }

    /// Whether no row was appended since the last batch.
    pub fn is_empty(&self) -> bool {
        self.plan_version.is_empty()
    }

    /// Appends one row.
    pub fn append(&mut self, row: &LineRow<'_>) {
        // Writing into a `StringBuilder` appends to the row being built;
        // `append_value("")` ends the row. Formatting into it cannot fail.
        self.project_id.append_value(row.project_id);
        self.resource_id.append_value(row.resource_id);
        self.meter.append_value(row.meter);
        if row.group.is_empty() {
            self.group.append_value("{}");
        } else {
            match &self.last_group {
                Some((g, text)) if g == row.group => self.group.append_value(text),
                _ => {
                    let text =
                        serde_json::to_string(row.group).expect("a map of strings serializes");
                    self.group.append_value(&text);
                    self.last_group = Some((row.group.clone(), text));
                }
            }
        }
        self.period_start.push(micros(row.period_start));
        self.period_end.push(micros(row.period_end));
        self.last_quantity.append(&mut self.quantity, row.quantity);
        self.unit.append_value(row.unit);
        match row.unit_price {
            Some(p) => self.last_unit_price.append(&mut self.unit_price, p),
            None => self.unit_price.append_null(),
        }
        self.last_amount.append(&mut self.amount, row.amount);
        self.currency.append_value(row.currency);
        self.plan_id.append_value(row.plan_id);
        self.plan_version.push(row.plan_version);
        let _ = write!(self.rule, "{}", row.rule);
        self.rule.append_value("");
        self.raw_count.push(row.raw_count);
        comma_separated(&mut self.segments, row.segments.paths());
        self.segments.append_value("");
        match &self.last_attributes {
            Some((a, text)) if Arc::ptr_eq(a, row.attributes) => self.attributes.append_value(text),
            _ => {
                let text = serde_json::to_string(&**row.attributes)
                    .expect("attribute maps always serialize");
                self.attributes.append_value(&text);
                self.last_attributes = Some((row.attributes.clone(), text));
            }
        }
        self.error.append_option(row.error);
    }

    /// The rows appended since the last batch, as a batch; the builder is
    /// empty again afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, LinesError> {
        let ts = |v: &mut Vec<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(std::mem::take(v)).with_timezone("UTC"))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.project_id.finish()),
            Arc::new(self.resource_id.finish()),
            Arc::new(self.meter.finish()),
            Arc::new(self.group.finish()),
            ts(&mut self.period_start),
            ts(&mut self.period_end),
            Arc::new(self.quantity.finish()),
            Arc::new(self.unit.finish()),
            Arc::new(self.unit_price.finish()),
            Arc::new(self.amount.finish()),
            Arc::new(self.currency.finish()),
            Arc::new(self.plan_id.finish()),
            Arc::new(UInt32Array::from(std::mem::take(&mut self.plan_version))),
            Arc::new(self.rule.finish()),
            Arc::new(UInt64Array::from(std::mem::take(&mut self.raw_count))),
            Arc::new(self.segments.finish()),
            Arc::new(self.attributes.finish()),
            Arc::new(self.error.finish()),
        ];
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, LinesError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| LinesError::Format(format!("column '{name}' is missing or mistyped")))
}

/// A batch of the rated-line schema → lines.
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<RatedLine>, LinesError> {
    let s = |name: &str| column::<StringArray>(batch, name);
    let t = |name: &str| column::<TimestampMicrosecondArray>(batch, name);
    let (project, resource, meter, group) = (
        s("project_id")?,
        s("resource_id")?,
        s("meter")?,
        s("group")?,
    );
    let (start, end) = (t("period_start")?, t("period_end")?);
    let (quantity, unit, unit_price, amount) =
        (s("quantity")?, s("unit")?, s("unit_price")?, s("amount")?);
    let (currency, plan_id, rule, segments, attributes, error) = (
        s("currency")?,
        s("plan_id")?,
        s("rule")?,
        s("segments")?,
        s("attributes")?,
        s("error")?,
    );
    let version = column::<UInt32Array>(batch, "plan_version")?;
    let raw_count = column::<UInt64Array>(batch, "raw_count")?;
    let decimal = |a: &StringArray, i: usize| -> Result<Decimal, LinesError> {
        a.value(i)
            .parse()
            .map_err(|_| LinesError::Format(format!("'{}' is not a decimal", a.value(i))))
    };
    let instant = |a: &TimestampMicrosecondArray, i: usize| {
        DateTime::from_timestamp_micros(a.value(i))
            .ok_or_else(|| LinesError::Format("timestamp out of range".into()))
    };
    fn parse_json<T: serde::de::DeserializeOwned>(
        a: &StringArray,
        i: usize,
    ) -> Result<T, LinesError> {
        serde_json::from_str(a.value(i)).map_err(|e| LinesError::Format(e.to_string()))
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        out.push(RatedLine {
            project_id: project.value(i).to_string(),
            resource_id: resource.value(i).to_string(),
            meter: meter.value(i).to_string(),
            group: parse_json(group, i)?,
            period_start: instant(start, i)?,
            period_end: instant(end, i)?,
            quantity: decimal(quantity, i)?,
            unit: unit.value(i).to_string(),
            unit_price: if unit_price.is_null(i) {
                None
            } else {
                Some(decimal(unit_price, i)?)
            },
            amount: decimal(amount, i)?,
            currency: currency.value(i).to_string(),
            plan_id: plan_id.value(i).to_string(),
            plan_version: version.value(i),
            rule: rule.value(i).to_string(),
            raw_count: raw_count.value(i),
            segments: match segments.value(i) {
                "" => Vec::new(),
                joined => joined.split(',').map(str::to_string).collect(),
            },
            attributes: parse_json(attributes, i)?,
            error: (!error.is_null(i)).then(|| error.value(i).to_string()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tally_core::AttributeValue;

    #[test]
    fn lines_round_trip_through_a_batch_at_full_precision() {
        let start = DateTime::from_timestamp(1_790_000_000 - 1_790_000_000 % 3600, 0).unwrap();
        let line = RatedLine {
            project_id: "p1".into(),
            resource_id: "vm-1".into(),
            meter: "instance.hours".into(),
            group: BTreeMap::from([("flavor_name".into(), "m1.small".into())]),
            period_start: start,
            period_end: start + chrono::Duration::hours(1),
            quantity: Decimal::ONE / Decimal::from(3),
            unit: "hour".into(),
            unit_price: Some("0.0125".parse().unwrap()),
            amount: Decimal::ONE / Decimal::from(3) * "0.0125".parse::<Decimal>().unwrap(),
            currency: "EUR".into(),
            plan_id: "public".into(),
            plan_version: 2,
            rule: "rules[1]".into(),
            raw_count: 3,
            segments: vec!["a.parquet".into(), "b.parquet".into()],
            attributes: Arc::new(BTreeMap::from([(
                "vcpus".to_string(),
                AttributeValue::Number(2.into()),
            )])),
            error: None,
        };
        let mut other = line.clone();
        other.unit_price = None;
        other.segments.clear();
        other.error = Some("no".into());
        let batch = to_batch(&[line.clone(), other.clone()]).unwrap();
        let back = from_batch(&batch).unwrap();
        assert_eq!(back, vec![line, other]);
        assert_eq!(
            back[0].quantity.to_string(),
            "0.3333333333333333333333333333"
        );
    }

    /// Consecutive equal decimals reuse the first one's text: equal values
    /// at other scales must still read as the same normalized text, and a
    /// different value right after must get its own.
    #[test]
    fn repeated_decimals_are_written_as_their_normalized_text() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let mut column = StringBuilder::new();
        let mut last = DecimalText::default();
        for v in ["1.00", "1", "1.0", "0.50", "0.5", "-0", "0", "1E-28"] {
            last.append(&mut column, d(v));
        }
        let column = column.finish();
        let texts: Vec<&str> = (0..column.len()).map(|i| column.value(i)).collect();
        assert_eq!(
            texts,
            [
                "1",
                "1",
                "1",
                "0.5",
                "0.5",
                "0",
                "0",
                "0.0000000000000000000000000001"
            ]
        );
    }
}
