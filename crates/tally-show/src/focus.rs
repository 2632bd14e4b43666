//! FOCUS 1.2 export of a billing period: the rows `tally_core::focus`
//! builds from each issued invoice, with the resources behind each line
//! read from the current rated lines, and from each credit note issued in
//! the period, written as CSV or Parquet.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use tally_bill::AccountScope;
use tally_bill::invoices::{InvoiceFilter, list_invoices};
use tally_core::billing::PeriodLabel;
use tally_core::focus::{
    COLUMNS, FocusRow, FocusType, FocusValue, IssuedCredit, ResourceShare, credit_note_rows,
    invoice_rows,
};
use tally_core::{Identity, rollup::LOCATION_ATTRIBUTES};
use tally_db::Database;
use tally_store::objects::RawObjects;

use crate::ShowError;

/// Decimal places of FOCUS decimal columns in Parquet (Decimal128(38, 18)):
/// every cost Tally invoices fits exactly; quantities and unit prices with
/// more places are rounded half to even there (CSV keeps them exact).
pub const PARQUET_DECIMAL_SCALE: i8 = 18;
const PARQUET_DECIMAL_PRECISION: u8 = 38;

/// Which invoices of a period to export.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// Also drafts (not yet issued; their figures may still change).
    pub include_drafts: bool,
}

/// The FOCUS rows of every invoice of `period` the caller may see: issued
/// ones (finalized or paid), and drafts when asked. Void invoices are left
/// out: they are not owed.
pub async fn period_rows(
    db: &Database,
    rated: &RawObjects,
    identity: &Identity,
    period: PeriodLabel,
    options: ExportOptions,
) -> Result<Vec<FocusRow>, ShowError> {
    let scope = AccountScope::of(identity);
    let filter = InvoiceFilter {
        period: Some(period),
        ..InvoiceFilter::default()
    };
    let invoices: Vec<_> = list_invoices(db, &scope, &filter)
        .await?
        .into_iter()
        .filter(|i| match i.document.status.as_str() {
            "finalized" | "paid" => true,
            "draft" => options.include_drafts,
            _ => false,
        })
        .collect();
    // Credit notes issued in the period credit invoices of any period. The
    // query's UTC window is a day wider than any account's own month; each
    // note is then placed by its account's calendar.
    let month = tally_core::billing::BillingPeriod::new(period, 1, chrono_tz::Tz::UTC)
        .map_err(|e| ShowError::Invalid(e.to_string()))?;
    let widened = (
        month.start - chrono::Duration::days(1),
        month.end + chrono::Duration::days(32),
    );
    let credited = list_invoices(
        db,
        &scope,
        &InvoiceFilter {
            credited_between: Some(widened),
            ..InvoiceFilter::default()
        },
    )
    .await?;
    if invoices.is_empty() && credited.is_empty() {
        return Ok(Vec::new());
    }
    let accounts: HashMap<String, tally_bill::accounts::Account> =
        tally_bill::accounts::list_accounts(db, &scope)
            .await?
            .into_iter()
            .map(|a| (a.spec.account_id.clone(), a))
            .collect();
    let names: HashMap<String, String> = accounts
        .iter()
        .map(|(id, a)| (id.clone(), a.spec.name.clone()))
        .collect();

    // Where each rated line goes: (project, meter, plan) → invoice lines
    // with their service period.
    // Keyed project → meter → plan, so each rated line of the period is
    // looked up by borrowed text, without building a key.
    type Slot = (DateTime<Utc>, DateTime<Utc>, usize, usize);
    type Slots = HashMap<String, HashMap<String, HashMap<String, Vec<Slot>>>>;
    let mut slots: Slots = HashMap::new();
    let (mut from, mut to) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
    for (i, inv) in invoices.iter().enumerate() {
        for (j, line) in inv.document.lines.iter().enumerate() {
            if line.correction {
                continue;
            }
            slots
                .entry(line.project_id.clone())
                .or_default()
                .entry(line.meter.clone())
                .or_default()
                .entry(line.plan_id.clone())
                .or_default()
                .push((line.service_start, line.service_end, i, j));
            from = Some(from.map_or(line.service_start, |f| f.min(line.service_start)));
            to = Some(to.map_or(line.service_end, |t| t.max(line.service_end)));
        }
    }
    let mut shares: Vec<Vec<BTreeMap<String, ResourceShare>>> = invoices
        .iter()
        .map(|inv| vec![BTreeMap::new(); inv.document.lines.len()])
        .collect();
    if let (Some(from), Some(to)) = (from, to) {
        tally_rate::runs::read_current_lines(db, rated, from, to, |l| {
            let Some(candidates) = slots
                .get(l.project_id.as_str())
                .and_then(|m| m.get(l.meter.as_str()))
                .and_then(|p| p.get(l.plan_id.as_str()))
            else {
                return;
            };
            let Some(&(_, _, i, j)) = candidates
                .iter()
                .find(|(s, e, _, _)| l.period_start >= *s && l.period_start < *e)
            else {
                return;
            };
            let attr = |name: &str| l.attributes.get(name).map(|v| v.text());
            let share = shares[i][j]
                .entry(l.resource_id.clone())
                .or_insert_with(|| ResourceShare {
                    resource_id: l.resource_id.clone(),
                    amount: Decimal::ZERO,
                    quantity: Decimal::ZERO,
                    sku: l.group.values().next().cloned(),
                    region: attr(LOCATION_ATTRIBUTES[0]),
                    availability_zone: attr(LOCATION_ATTRIBUTES[1]),
                });
            share.amount += l.amount;
            share.quantity += l.quantity;
        })
        .await?;
    }
    let mut rows = Vec::new();
    for (inv, line_shares) in invoices.iter().zip(shares) {
        let line_shares: Vec<Vec<ResourceShare>> = line_shares
            .into_iter()
            .map(|m| m.into_values().collect())
            .collect();
        let name = names
            .get(&inv.document.account_id)
            .cloned()
            .unwrap_or_default();
        rows.extend(
            invoice_rows(&inv.document, &name, &line_shares)
                .map_err(|e| ShowError::Invalid(e.to_string()))?,
        );
    }
    for inv in &credited {
        let Some(account) = accounts.get(&inv.document.account_id) else {
            continue;
        };
        let billing = tally_core::billing::BillingPeriod::new(
            period,
            account.spec.billing_day,
            account.timezone(),
        )
        .map_err(|e| ShowError::Invalid(e.to_string()))?;
        for note in &inv.credit_notes {
            if note.issued_at < billing.start || note.issued_at >= billing.end {
                continue;
            }
            let issued = IssuedCredit {
                credit_note_id: note.credit_note_id.clone(),
                number: note.number.clone(),
                line_no: note.line_no,
                net: note.net,
                tax: note.tax,
                reason: note.reason.clone(),
            };
            rows.extend(credit_note_rows(
                &inv.document,
                &account.spec.name,
                &issued,
                billing.start,
                billing.end,
            ));
        }
    }
    Ok(rows)
}

/// Writes rows as CSV with a header: decimals exact, instants RFC 3339
/// UTC, nulls empty.
pub fn write_csv(rows: &[FocusRow], out: impl std::io::Write) -> Result<(), ShowError> {
    let mut w = csv::Writer::from_writer(out);
    let io = |e: csv::Error| ShowError::Invalid(format!("writing CSV: {e}"));
    w.write_record(COLUMNS.iter().map(|(name, _)| *name))
        .map_err(io)?;
    for r in rows {
        let cells: Vec<String> = r
            .values()
            .into_iter()
            .map(|v| match v {
                FocusValue::Null => String::new(),
                FocusValue::Text(s) => s.to_string(),
                FocusValue::Decimal(d) => d.normalize().to_string(),
                FocusValue::DateTime(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                FocusValue::Integer(n) => n.to_string(),
            })
            .collect();
        w.write_record(&cells).map_err(io)?;
    }
    w.flush()
        .map_err(|e| ShowError::Invalid(format!("writing CSV: {e}")))?;
    Ok(())
}

/// The Arrow schema of FOCUS Parquet files.
pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|(name, t)| {
                let dt = match t {
                    FocusType::String => DataType::Utf8,
                    FocusType::Decimal => {
                        DataType::Decimal128(PARQUET_DECIMAL_PRECISION, PARQUET_DECIMAL_SCALE)
                    }
                    FocusType::DateTime => {
                        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
                    }
                    FocusType::Integer => DataType::Int64,
                };
                Field::new(*name, dt, true)
            })
            .collect::<Vec<_>>(),
    ))
}

fn decimal128(d: Decimal) -> Result<i128, ShowError> {
    let scale = PARQUET_DECIMAL_SCALE as u32;
    let mut r = d.round_dp_with_strategy(scale, RoundingStrategy::MidpointNearestEven);
    r.rescale(scale);
    if r.scale() != scale {
        return Err(ShowError::Invalid(format!(
            "{d} does not fit Decimal128({PARQUET_DECIMAL_PRECISION}, {PARQUET_DECIMAL_SCALE})"
        )));
    }
    Ok(r.mantissa())
}

/// Rows as one Arrow batch.
pub fn to_batch(rows: &[FocusRow]) -> Result<RecordBatch, ShowError> {
    let values: Vec<Vec<FocusValue<'_>>> = rows.iter().map(FocusRow::values).collect();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(COLUMNS.len());
    for (c, (_, t)) in COLUMNS.iter().enumerate() {
        let cells = values.iter().map(|v| &v[c]);
        let array: ArrayRef = match t {
            FocusType::String => {
                let mut b = StringBuilder::new();
                for v in cells {
                    match v {
                        FocusValue::Text(s) => b.append_value(s),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            FocusType::Decimal => {
                let mut b = Decimal128Builder::new();
                for v in cells {
                    match v {
                        FocusValue::Decimal(d) => b.append_value(decimal128(*d)?),
                        _ => b.append_null(),
                    }
                }
                Arc::new(
                    b.finish()
                        .with_precision_and_scale(PARQUET_DECIMAL_PRECISION, PARQUET_DECIMAL_SCALE)
                        .map_err(|e| ShowError::Invalid(e.to_string()))?,
                )
            }
            FocusType::DateTime => {
                let mut b = TimestampMicrosecondBuilder::new();
                for v in cells {
                    match v {
                        FocusValue::DateTime(t) => b.append_value(t.timestamp_micros()),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish().with_timezone("UTC"))
            }
            FocusType::Integer => {
                let mut b = Int64Builder::new();
                for v in cells {
                    match v {
                        FocusValue::Integer(n) => b.append_value(*n),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
        };
        columns.push(array);
    }
    RecordBatch::try_new(schema(), columns).map_err(|e| ShowError::Invalid(e.to_string()))
}

/// Writes rows as one Parquet file (zstd).
pub fn write_parquet(rows: &[FocusRow], out: impl std::io::Write + Send) -> Result<(), ShowError> {
    let batch = to_batch(rows)?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(
            parquet::basic::ZstdLevel::try_new(3).expect("valid level"),
        ))
        .build();
    let err =
        |e: parquet::errors::ParquetError| ShowError::Invalid(format!("writing Parquet: {e}"));
    let mut w = parquet::arrow::ArrowWriter::try_new(out, schema(), Some(props)).map_err(err)?;
    w.write(&batch).map_err(err)?;
    w.close().map_err(err)?;
    Ok(())
}
