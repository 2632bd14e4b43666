//! CSV of rated lines and of invoices, for spreadsheets and accounting
//! tools: one header row, decimals exact, instants RFC 3339 UTC.

use std::io::Write;

use tally_bill::invoices::StoredInvoice;
use tally_core::RatedLine;

use crate::ShowError;

fn err(e: csv::Error) -> ShowError {
    ShowError::Invalid(format!("writing CSV: {e}"))
}

fn instant(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Rated lines, one row each, at full precision.
pub fn rated_lines(lines: &[RatedLine], out: impl Write) -> Result<(), ShowError> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "project_id",
        "resource_id",
        "meter",
        "group",
        "period_start",
        "period_end",
        "quantity",
        "unit",
        "unit_price",
        "amount",
        "currency",
        "plan_id",
        "plan_version",
        "rule",
        "raw_count",
        "error",
        "line_id",
    ])
    .map_err(err)?;
    for l in lines {
        w.write_record([
            l.project_id.clone(),
            l.resource_id.clone(),
            l.meter.clone(),
            serde_json::to_string(&l.group).expect("strings serialize"),
            instant(l.period_start),
            instant(l.period_end),
            l.quantity.normalize().to_string(),
            l.unit.clone(),
            l.unit_price
                .map(|p| p.normalize().to_string())
                .unwrap_or_default(),
            l.amount.normalize().to_string(),
            l.currency.clone(),
            l.plan_id.clone(),
            l.plan_version.to_string(),
            l.rule.clone(),
            l.raw_count.to_string(),
            l.error.clone().unwrap_or_default(),
            l.line_id(),
        ])
        .map_err(err)?;
    }
    w.flush()
        .map_err(|e| ShowError::Invalid(format!("writing CSV: {e}")))
}

/// Invoices, one row per invoice line, each with its invoice's header and
/// totals (so a spreadsheet can filter by invoice and still sum lines).
pub fn invoices(invoices: &[StoredInvoice], out: impl Write) -> Result<(), ShowError> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "invoice_id",
        "number",
        "status",
        "account_id",
        "period",
        "issued_at",
        "due_at",
        "currency",
        "subtotal",
        "tax_total",
        "total",
        "line_no",
        "project_id",
        "meter",
        "service_start",
        "service_end",
        "quantity",
        "unit",
        "unit_price",
        "amount",
        "correction",
    ])
    .map_err(err)?;
    for i in invoices {
        let d = &i.document;
        let tax: rust_decimal::Decimal = d.taxes.iter().map(|t| t.amount).sum();
        let head = [
            d.invoice_id.clone(),
            d.number.clone().unwrap_or_default(),
            d.status.clone(),
            d.account_id.clone(),
            d.period.clone(),
            d.issued_at.map(instant).unwrap_or_default(),
            d.due_at.map(instant).unwrap_or_default(),
            d.currency.code().to_string(),
            d.subtotal.to_string(),
            tax.to_string(),
            d.total.to_string(),
        ];
        for l in &d.lines {
            let mut row: Vec<String> = head.to_vec();
            row.extend([
                l.line_no.to_string(),
                l.project_id.clone(),
                l.meter.clone(),
                instant(l.service_start),
                instant(l.service_end),
                l.quantity.normalize().to_string(),
                l.unit.clone(),
                l.unit_price
                    .map(|p| p.normalize().to_string())
                    .unwrap_or_default(),
                l.amount.to_string(),
                l.correction.to_string(),
            ]);
            w.write_record(&row).map_err(err)?;
        }
    }
    w.flush()
        .map_err(|e| ShowError::Invalid(format!("writing CSV: {e}")))
}
