//! Rated lines as Arrow batches and Parquet files.
//!
//! Quantities and amounts are stored as decimal *text*, not `Decimal128`: a
//! rated line keeps full precision (an hour count like 1/3 has 28
//! significant digits), and no fixed Arrow scale holds every value
//! `rust_decimal` can produce without rounding, which only invoices may do.
//! The run id is deliberately not a column: the files of two runs over the
//! same data and plan are then byte-identical, which is how determinism is
//! tested, and the catalog says which run a file belongs to.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::RatedLine;

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
    let n = lines.len();
    let text = |f: &dyn Fn(&RatedLine) -> String| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        for l in lines {
            b.append_value(f(l));
        }
        Arc::new(b.finish())
    };
    // Fields the line already holds as text are copied once, into the array.
    let borrowed = |f: &dyn Fn(&RatedLine) -> &str| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        for l in lines {
            b.append_value(f(l));
        }
        Arc::new(b.finish())
    };
    let optional = |f: &dyn Fn(&RatedLine) -> Option<String>| -> ArrayRef {
        Arc::new(lines.iter().map(f).collect::<StringArray>())
    };
    let ts = |f: &dyn Fn(&RatedLine) -> i64| -> ArrayRef {
        Arc::new(
            lines
                .iter()
                .map(|l| Some(f(l)))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        borrowed(&|l| &l.project_id),
        borrowed(&|l| &l.resource_id),
        borrowed(&|l| &l.meter),
        text(&|l| {
            if l.group.is_empty() {
                "{}".to_string()
            } else {
                serde_json::to_string(&l.group).expect("a map of strings serializes")
            }
        }),
        ts(&|l| micros(l.period_start)),
        ts(&|l| micros(l.period_end)),
        text(&|l| l.quantity.normalize().to_string()),
        borrowed(&|l| &l.unit),
        optional(&|l| l.unit_price.map(|p| p.normalize().to_string())),
        text(&|l| l.amount.normalize().to_string()),
        borrowed(&|l| &l.currency),
        borrowed(&|l| &l.plan_id),
        Arc::new(
            lines
                .iter()
                .map(|l| l.plan_version)
                .collect::<UInt32Array>(),
        ),
        borrowed(&|l| &l.rule),
        Arc::new(lines.iter().map(|l| l.raw_count).collect::<UInt64Array>()),
        text(&|l| l.segments.join(",")),
        attributes_column(lines),
        optional(&|l| l.error.clone()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// The attributes column, serializing each shared attribute set once.
fn attributes_column(lines: &[RatedLine]) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(lines.len(), lines.len() * 64);
    let mut last: Option<(&Arc<tally_core::Attributes>, String)> = None;
    for l in lines {
        match &last {
            Some((a, text)) if Arc::ptr_eq(a, &l.attributes) => b.append_value(text),
            _ => {
                let text =
                    serde_json::to_string(&*l.attributes).expect("attribute maps always serialize");
                b.append_value(&text);
                last = Some((&l.attributes, text));
            }
        }
    }
    Arc::new(b.finish())
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
}
