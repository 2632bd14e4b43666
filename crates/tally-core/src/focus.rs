//! FOCUS 1.2 cost and usage rows of an invoice (the FinOps Open Cost and
//! Usage Specification), as `docs/focus.md` maps them.
//!
//! Rows are built from the issued invoice document, not from rated lines,
//! so that the BilledCost of an invoice's rows adds up to its total to the
//! cent: each invoice line's rounded amount is shared among the resources
//! behind it in proportion to their exact cost (largest remainder, in
//! minor units), discounts become Credit rows, the minimum-commitment
//! top-up an Adjustment row and each tax a Tax row. The builder checks
//! that sum before it returns.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::billing::{DocumentLine, InvoiceDocument};
use crate::service::service_of;

/// The provider, publisher and invoice issuer columns when a seller has
/// no name.
pub const DEFAULT_PROVIDER: &str = "OpenStack";

/// One resource's part of an invoice line: its exact cost and quantity
/// over the line's service period, from the current rated lines.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceShare {
    /// The resource.
    pub resource_id: String,
    /// Its exact cost in the line.
    pub amount: Decimal,
    /// Its quantity in the line's unit.
    pub quantity: Decimal,
    /// The SKU attribute (flavor, volume type), when the meter has one.
    pub sku: Option<String>,
    /// Region, when known.
    pub region: Option<String>,
    /// Availability zone, when known.
    pub availability_zone: Option<String>,
}

/// One FOCUS row. Field names are the specification's columns; `x_`
/// fields are Tally's OpenStack extensions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[allow(non_snake_case)]
pub struct FocusRow {
    /// Availability zone of the resource.
    pub AvailabilityZone: Option<String>,
    /// The charge, in the billing currency, as invoiced.
    pub BilledCost: Decimal,
    /// The billing account.
    pub BillingAccountId: String,
    /// Its name.
    pub BillingAccountName: String,
    /// ISO 4217 code.
    pub BillingCurrency: String,
    /// End of the billing period (exclusive).
    pub BillingPeriodEnd: DateTime<Utc>,
    /// Start of the billing period.
    pub BillingPeriodStart: DateTime<Utc>,
    /// Usage, Tax, Credit or Adjustment.
    pub ChargeCategory: &'static str,
    /// `Correction` for late-usage corrections of an earlier period.
    pub ChargeClass: Option<&'static str>,
    /// What the charge is, for people.
    pub ChargeDescription: String,
    /// Usage-Based or One-Time.
    pub ChargeFrequency: &'static str,
    /// End of the charge (service) period, exclusive.
    pub ChargePeriodEnd: DateTime<Utc>,
    /// Start of the charge period.
    pub ChargePeriodStart: DateTime<Utc>,
    /// Quantity consumed (usage rows).
    pub ConsumedQuantity: Option<Decimal>,
    /// Its unit.
    pub ConsumedUnit: Option<String>,
    /// Cost at the contracted (plan) price.
    pub ContractedCost: Decimal,
    /// The plan's unit price, when one applied.
    pub ContractedUnitPrice: Option<Decimal>,
    /// Cost after discounts, as invoiced.
    pub EffectiveCost: Decimal,
    /// The invoice (Tally's id).
    pub InvoiceId: String,
    /// The seller.
    pub InvoiceIssuerName: String,
    /// Cost at list price (the plan's price: Tally has no separate list).
    pub ListCost: Decimal,
    /// List unit price.
    pub ListUnitPrice: Option<Decimal>,
    /// Standard (plan prices) for usage rows.
    pub PricingCategory: Option<&'static str>,
    /// Quantity priced.
    pub PricingQuantity: Option<Decimal>,
    /// Its unit.
    pub PricingUnit: Option<String>,
    /// The cloud operator.
    pub ProviderName: String,
    /// Who publishes the service (the operator).
    pub PublisherName: String,
    /// Region id.
    pub RegionId: Option<String>,
    /// Region name.
    pub RegionName: Option<String>,
    /// The resource.
    pub ResourceId: Option<String>,
    /// Its name (Tally knows ids only).
    pub ResourceName: Option<String>,
    /// Its type (the OpenStack service's resource kind).
    pub ResourceType: Option<String>,
    /// FOCUS service category.
    pub ServiceCategory: &'static str,
    /// Service name.
    pub ServiceName: &'static str,
    /// SKU: the meter, with the flavor or volume type when there is one.
    pub SkuId: Option<String>,
    /// SKU price: the SKU under a plan.
    pub SkuPriceId: Option<String>,
    /// The Keystone project.
    pub SubAccountId: Option<String>,
    /// Its name (Tally knows ids only, so the id).
    pub SubAccountName: Option<String>,
    /// The invoice's number, once finalized.
    pub x_InvoiceNumber: Option<String>,
    /// The invoice line behind the row.
    pub x_InvoiceLineNumber: Option<u32>,
    /// The rated meter.
    pub x_Meter: Option<String>,
    /// The OpenStack service (nova, cinder, ...).
    pub x_OpenStackService: Option<&'static str>,
    /// The price plan.
    pub x_PlanId: Option<String>,
}

/// The FOCUS columns in file order, with their FOCUS data type.
pub const COLUMNS: [(&str, FocusType); 43] = [
    ("AvailabilityZone", FocusType::String),
    ("BilledCost", FocusType::Decimal),
    ("BillingAccountId", FocusType::String),
    ("BillingAccountName", FocusType::String),
    ("BillingCurrency", FocusType::String),
    ("BillingPeriodEnd", FocusType::DateTime),
    ("BillingPeriodStart", FocusType::DateTime),
    ("ChargeCategory", FocusType::String),
    ("ChargeClass", FocusType::String),
    ("ChargeDescription", FocusType::String),
    ("ChargeFrequency", FocusType::String),
    ("ChargePeriodEnd", FocusType::DateTime),
    ("ChargePeriodStart", FocusType::DateTime),
    ("ConsumedQuantity", FocusType::Decimal),
    ("ConsumedUnit", FocusType::String),
    ("ContractedCost", FocusType::Decimal),
    ("ContractedUnitPrice", FocusType::Decimal),
    ("EffectiveCost", FocusType::Decimal),
    ("InvoiceId", FocusType::String),
    ("InvoiceIssuerName", FocusType::String),
    ("ListCost", FocusType::Decimal),
    ("ListUnitPrice", FocusType::Decimal),
    ("PricingCategory", FocusType::String),
    ("PricingQuantity", FocusType::Decimal),
    ("PricingUnit", FocusType::String),
    ("ProviderName", FocusType::String),
    ("PublisherName", FocusType::String),
    ("RegionId", FocusType::String),
    ("RegionName", FocusType::String),
    ("ResourceId", FocusType::String),
    ("ResourceName", FocusType::String),
    ("ResourceType", FocusType::String),
    ("ServiceCategory", FocusType::String),
    ("ServiceName", FocusType::String),
    ("SkuId", FocusType::String),
    ("SkuPriceId", FocusType::String),
    ("SubAccountId", FocusType::String),
    ("SubAccountName", FocusType::String),
    ("x_InvoiceNumber", FocusType::String),
    ("x_InvoiceLineNumber", FocusType::Integer),
    ("x_Meter", FocusType::String),
    ("x_OpenStackService", FocusType::String),
    ("x_PlanId", FocusType::String),
];

/// A FOCUS column's data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FocusType {
    /// Text.
    String,
    /// An exact decimal.
    Decimal,
    /// An instant, UTC.
    DateTime,
    /// A whole number.
    Integer,
}

/// A value of one cell, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum FocusValue<'a> {
    /// Null.
    Null,
    /// Text.
    Text(&'a str),
    /// A decimal.
    Decimal(Decimal),
    /// An instant.
    DateTime(DateTime<Utc>),
    /// A whole number.
    Integer(i64),
}

impl FocusRow {
    /// The row's cells in [`COLUMNS`] order.
    pub fn values(&self) -> Vec<FocusValue<'_>> {
        use FocusValue as V;
        fn t(s: &Option<String>) -> FocusValue<'_> {
            s.as_deref().map_or(FocusValue::Null, FocusValue::Text)
        }
        let d = |x: &Option<Decimal>| x.map_or(V::Null, V::Decimal);
        vec![
            t(&self.AvailabilityZone),
            V::Decimal(self.BilledCost),
            V::Text(&self.BillingAccountId),
            V::Text(&self.BillingAccountName),
            V::Text(&self.BillingCurrency),
            V::DateTime(self.BillingPeriodEnd),
            V::DateTime(self.BillingPeriodStart),
            V::Text(self.ChargeCategory),
            self.ChargeClass.map_or(V::Null, V::Text),
            V::Text(&self.ChargeDescription),
            V::Text(self.ChargeFrequency),
            V::DateTime(self.ChargePeriodEnd),
            V::DateTime(self.ChargePeriodStart),
            d(&self.ConsumedQuantity),
            t(&self.ConsumedUnit),
            V::Decimal(self.ContractedCost),
            d(&self.ContractedUnitPrice),
            V::Decimal(self.EffectiveCost),
            V::Text(&self.InvoiceId),
            V::Text(&self.InvoiceIssuerName),
            V::Decimal(self.ListCost),
            d(&self.ListUnitPrice),
            self.PricingCategory.map_or(V::Null, V::Text),
            d(&self.PricingQuantity),
            t(&self.PricingUnit),
            V::Text(&self.ProviderName),
            V::Text(&self.PublisherName),
            t(&self.RegionId),
            t(&self.RegionName),
            t(&self.ResourceId),
            t(&self.ResourceName),
            t(&self.ResourceType),
            V::Text(self.ServiceCategory),
            V::Text(self.ServiceName),
            t(&self.SkuId),
            t(&self.SkuPriceId),
            t(&self.SubAccountId),
            t(&self.SubAccountName),
            t(&self.x_InvoiceNumber),
            self.x_InvoiceLineNumber
                .map_or(V::Null, |n| V::Integer(i64::from(n))),
            t(&self.x_Meter),
            self.x_OpenStackService.map_or(V::Null, V::Text),
            t(&self.x_PlanId),
        ]
    }
}

/// The rows do not add up to the invoice: a bug, never a rounding choice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FOCUS rows of invoice {invoice_id} add up to {rows}, but the invoice total is {total}")]
pub struct FocusMismatch {
    /// The invoice.
    pub invoice_id: String,
    /// Σ BilledCost.
    pub rows: Decimal,
    /// The invoice total.
    pub total: Decimal,
}

/// Shares `total` (already at `digits` decimal places) among `weights` in
/// proportion, in whole minor units: each share is rounded down, and the
/// units left go one each to the largest remainders (ties to the earlier
/// weight). The shares add up to `total` exactly. `None` when the weights
/// add up to zero (nothing to be proportional to).
pub fn allocate(total: Decimal, weights: &[Decimal], digits: u32) -> Option<Vec<Decimal>> {
    let sum: Decimal = weights.iter().sum();
    if sum.is_zero() {
        return None;
    }
    let unit = Decimal::new(1, digits);
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = total * *w / sum;
        let floor = exact
            .round_dp_with_strategy(digits, rust_decimal::RoundingStrategy::ToNegativeInfinity);
        remainders.push((exact - floor, i));
        shares.push(floor);
    }
    let given: Decimal = shares.iter().sum();
    let mut left = ((total - given) / unit).round();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders {
        if left <= Decimal::ZERO {
            break;
        }
        shares[i] += unit;
        left -= Decimal::ONE;
    }
    Some(shares)
}

/// The resource type of a meter's resources, by OpenStack service.
fn resource_type(meter: &str) -> Option<String> {
    let t = match service_of(meter).openstack {
        "nova" => "instance",
        "cinder" => {
            if meter.starts_with("snapshot") {
                "snapshot"
            } else if meter.starts_with("backup") {
                "backup"
            } else {
                "volume"
            }
        }
        "glance" => "image",
        "neutron" => {
            if meter.starts_with("floating") || meter.starts_with("ip.") {
                "floatingip"
            } else {
                "network"
            }
        }
        "swift" => "container",
        _ => return None,
    };
    Some(t.to_string())
}

/// A row of `doc` with the columns every row of it shares; the caller
/// sets what is particular to the row.
fn base_row(
    doc: &InvoiceDocument,
    account_name: &str,
    category: &'static str,
    description: String,
    cost: Decimal,
) -> FocusRow {
    let provider = if doc.seller.name.is_empty() {
        DEFAULT_PROVIDER.to_string()
    } else {
        doc.seller.name.clone()
    };
    FocusRow {
        AvailabilityZone: None,
        BilledCost: cost,
        BillingAccountId: doc.account_id.clone(),
        BillingAccountName: account_name.to_string(),
        BillingCurrency: doc.currency.code().to_string(),
        BillingPeriodEnd: doc.period_end,
        BillingPeriodStart: doc.period_start,
        ChargeCategory: category,
        ChargeClass: None,
        ChargeDescription: description,
        ChargeFrequency: "One-Time",
        ChargePeriodEnd: doc.period_end,
        ChargePeriodStart: doc.period_start,
        ConsumedQuantity: None,
        ConsumedUnit: None,
        ContractedCost: cost,
        ContractedUnitPrice: None,
        EffectiveCost: cost,
        InvoiceId: doc.invoice_id.clone(),
        InvoiceIssuerName: provider.clone(),
        ListCost: cost,
        ListUnitPrice: None,
        PricingCategory: None,
        PricingQuantity: None,
        PricingUnit: None,
        ProviderName: provider.clone(),
        PublisherName: provider.clone(),
        RegionId: None,
        RegionName: None,
        ResourceId: None,
        ResourceName: None,
        ResourceType: None,
        ServiceCategory: "Other",
        ServiceName: "Other",
        SkuId: None,
        SkuPriceId: None,
        SubAccountId: None,
        SubAccountName: None,
        x_InvoiceNumber: doc.number.clone(),
        x_InvoiceLineNumber: None,
        x_Meter: None,
        x_OpenStackService: None,
        x_PlanId: None,
    }
}

/// Builds the FOCUS rows of one invoice. `shares[i]` are the resources
/// behind `doc.lines[i]` (empty when unknown: the line becomes one row
/// without a resource).
pub fn invoice_rows(
    doc: &InvoiceDocument,
    account_name: &str,
    shares: &[Vec<ResourceShare>],
) -> Result<Vec<FocusRow>, FocusMismatch> {
    let digits = doc.currency.minor_unit_digits();
    let base = |category: &'static str, description: String, cost: Decimal| {
        base_row(doc, account_name, category, description, cost)
    };
    let mut rows = Vec::new();
    let empty = Vec::new();
    for (i, line) in doc.lines.iter().enumerate() {
        let line_shares = shares.get(i).unwrap_or(&empty);
        rows.extend(usage_rows(line, line_shares, digits, &base));
    }
    for d in &doc.discounts {
        rows.push(base("Credit", format!("coupon {}", d.code), -d.amount));
    }
    if !doc.commitment_top_up.is_zero() {
        rows.push(base(
            "Adjustment",
            "minimum commitment top-up".into(),
            doc.commitment_top_up,
        ));
    }
    for t in &doc.taxes {
        let mut row = base(
            "Tax",
            format!(
                "{} {}% of {}",
                t.name,
                (t.rate * Decimal::ONE_HUNDRED).normalize(),
                t.base
            ),
            t.amount,
        );
        row.PricingCategory = None;
        rows.push(row);
    }
    let sum: Decimal = rows.iter().map(|r| r.BilledCost).sum();
    if sum != doc.total {
        return Err(FocusMismatch {
            invoice_id: doc.invoice_id.clone(),
            rows: sum,
            total: doc.total,
        });
    }
    Ok(rows)
}

/// A credit note as FOCUS needs it: the document that carries the money
/// back, issued in a later billing period than (or the same as) the
/// invoice it credits.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedCredit {
    /// Its id: the FOCUS `InvoiceId` of its rows.
    pub credit_note_id: String,
    /// Its number.
    pub number: String,
    /// The invoice line it credits, when one.
    pub line_no: Option<u32>,
    /// Amount credited before tax (positive).
    pub net: Decimal,
    /// Tax credited (positive).
    pub tax: Decimal,
    /// Why.
    pub reason: String,
}

/// The FOCUS rows of a credit note against `doc`, billed in the period
/// `[billing_start, billing_end)`: a `Credit` row of `-net` and, when tax
/// is credited, a `Tax` row of `-tax`, both of class `Correction` (they
/// correct an invoiced charge) and charged over the credited invoice's
/// period. Their `BilledCost` adds up to minus the note's total, under the
/// note's own id.
pub fn credit_note_rows(
    doc: &InvoiceDocument,
    account_name: &str,
    note: &IssuedCredit,
    billing_start: DateTime<Utc>,
    billing_end: DateTime<Utc>,
) -> Vec<FocusRow> {
    let line = note
        .line_no
        .and_then(|n| doc.lines.iter().find(|l| l.line_no == n));
    let what = match line {
        Some(l) => format!(
            "line {} ({} of project {})",
            l.line_no, l.meter, l.project_id
        ),
        None => "the whole invoice".to_string(),
    };
    let row = |category: &'static str, label: &str, cost: Decimal| {
        let mut r = base_row(
            doc,
            account_name,
            category,
            format!(
                "{label} {} for {what} of invoice {}: {}",
                note.number,
                doc.number.as_deref().unwrap_or(&doc.invoice_id),
                note.reason
            ),
            cost,
        );
        r.ChargeClass = Some("Correction");
        r.InvoiceId = note.credit_note_id.clone();
        r.x_InvoiceNumber = Some(note.number.clone());
        r.x_InvoiceLineNumber = note.line_no;
        r.BillingPeriodStart = billing_start;
        r.BillingPeriodEnd = billing_end;
        if let Some(l) = line {
            let service = service_of(&l.meter);
            r.ChargePeriodStart = l.service_start;
            r.ChargePeriodEnd = l.service_end;
            r.ServiceCategory = service.category;
            r.ServiceName = service.name;
            r.SubAccountId = Some(l.project_id.clone());
            r.SubAccountName = Some(l.project_id.clone());
            r.x_Meter = Some(l.meter.clone());
            r.x_PlanId = Some(l.plan_id.clone());
            r.x_OpenStackService = (!service.openstack.is_empty()).then_some(service.openstack);
        }
        r
    };
    let mut rows = vec![row("Credit", "credit note", -note.net)];
    if !note.tax.is_zero() {
        rows.push(row("Tax", "tax credited by credit note", -note.tax));
    }
    rows
}

fn usage_rows(
    line: &DocumentLine,
    shares: &[ResourceShare],
    digits: u32,
    base: &dyn Fn(&'static str, String, Decimal) -> FocusRow,
) -> Vec<FocusRow> {
    let service = service_of(&line.meter);
    let weights: Vec<Decimal> = shares.iter().map(|s| s.amount).collect();
    // A correction is a difference against what was invoiced, not usage of
    // today's resources: it stays one row.
    let allocated = if line.correction {
        None
    } else {
        allocate(line.amount, &weights, digits)
    };
    let row = |cost: Decimal, share: Option<&ResourceShare>| {
        let mut r = base(
            "Usage",
            format!(
                "{} {} of {}{}",
                line.quantity.normalize(),
                line.unit,
                line.meter,
                if line.correction {
                    " (late usage of an invoiced period)"
                } else {
                    ""
                }
            ),
            cost,
        );
        let quantity = share.map_or(line.quantity, |s| s.quantity).normalize();
        r.ChargeClass = line.correction.then_some("Correction");
        r.ChargeFrequency = "Usage-Based";
        r.ChargePeriodStart = line.service_start;
        r.ChargePeriodEnd = line.service_end;
        r.ConsumedQuantity = Some(quantity);
        r.ConsumedUnit = Some(line.unit.clone());
        r.PricingQuantity = Some(quantity);
        r.PricingUnit = Some(line.unit.clone());
        r.PricingCategory = Some("Standard");
        r.ListUnitPrice = line.unit_price;
        r.ContractedUnitPrice = line.unit_price;
        r.ServiceCategory = service.category;
        r.ServiceName = service.name;
        r.SubAccountId = Some(line.project_id.clone());
        r.SubAccountName = Some(line.project_id.clone());
        r.x_InvoiceLineNumber = Some(line.line_no);
        r.x_Meter = Some(line.meter.clone());
        r.x_OpenStackService = (!service.openstack.is_empty()).then_some(service.openstack);
        r.x_PlanId = Some(line.plan_id.clone());
        let sku = match share.and_then(|s| s.sku.as_deref()) {
            Some(sku) => format!("{}:{sku}", line.meter),
            None => line.meter.clone(),
        };
        r.SkuPriceId = Some(format!("{}:{sku}", line.plan_id));
        r.SkuId = Some(sku);
        if let Some(s) = share {
            r.ResourceId = Some(s.resource_id.clone());
            r.ResourceName = Some(s.resource_id.clone());
            r.ResourceType = resource_type(&line.meter);
            r.RegionId = s.region.clone();
            r.RegionName = s.region.clone();
            r.AvailabilityZone = s.availability_zone.clone();
        }
        r
    };
    match allocated {
        Some(amounts) => shares
            .iter()
            .zip(amounts)
            .map(|(s, cost)| row(cost, Some(s)))
            .collect(),
        None => vec![row(line.amount, None)],
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use proptest::prelude::*;

    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn a_credit_note_is_a_correction_billed_in_its_own_period() {
        let doc: InvoiceDocument = serde_json::from_value(serde_json::json!({
            "invoice_id": "acme-2026-09", "number": "INV-000003", "status": "finalized",
            "account_id": "acme",
            "seller": {"name": "Example Cloud AG", "address": []},
            "buyer": {"name": "Acme", "address": []},
            "period": "2026-09", "period_start": "2026-09-01T00:00:00Z", "period_end": "2026-10-01T00:00:00Z",
            "currency": "EUR", "issued_at": "2026-10-01T08:00:00Z", "due_at": null,
            "lines": [{
                "line_no": 1, "project_id": "p1", "meter": "instance.hours", "plan_id": "std",
                "service_start": "2026-09-03T00:00:00Z", "service_end": "2026-10-01T00:00:00Z",
                "quantity": "10", "unit": "hour", "unit_price": "1", "amount": "10.00",
                "exact_amount": "10", "correction": false
            }],
            "subtotal": "10.00", "discounts": [], "commitment_top_up": "0", "taxable": "10.00",
            "taxes": [{"name": "VAT", "rate": "0.19", "base": "10.00", "amount": "1.90"}],
            "total": "11.90"
        }))
        .unwrap();
        let october = |day: u32| {
            chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 10 + day / 100, day % 100, 0, 0, 0)
                .unwrap()
        };
        let note = IssuedCredit {
            credit_note_id: "cn-1".into(),
            number: "CN-000001".into(),
            line_no: Some(1),
            net: d("4.00"),
            tax: d("0.76"),
            reason: "outage".into(),
        };
        let rows = credit_note_rows(&doc, "Acme", &note, october(1), october(101));
        assert_eq!(rows.len(), 2);
        let (credit, tax) = (&rows[0], &rows[1]);
        assert_eq!(
            (credit.ChargeCategory, tax.ChargeCategory),
            ("Credit", "Tax")
        );
        assert_eq!(credit.BilledCost + tax.BilledCost, d("-4.76"));
        for r in &rows {
            assert_eq!(r.ChargeClass, Some("Correction"));
            assert_eq!(r.InvoiceId, "cn-1");
            assert_eq!(r.BillingPeriodStart, october(1));
            assert_eq!(r.ChargePeriodStart, doc.lines[0].service_start);
            assert_eq!(r.SubAccountId.as_deref(), Some("p1"));
            assert_eq!(r.ServiceName, "Compute");
            assert!(
                r.ChargeDescription.contains("INV-000003"),
                "{}",
                r.ChargeDescription
            );
        }
        // No tax credited: one row.
        let untaxed = IssuedCredit {
            tax: Decimal::ZERO,
            line_no: None,
            ..note
        };
        let rows = credit_note_rows(&doc, "Acme", &untaxed, october(1), october(101));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].SubAccountId, None);
        assert_eq!(rows[0].ChargePeriodStart, doc.period_start);
    }

    #[test]
    fn a_cent_left_over_goes_to_the_largest_remainder() {
        // 1.00 in three equal parts: 0.33 each, the extra cent to the first.
        let shares = allocate(d("1.00"), &[d("1"), d("1"), d("1")], 2).unwrap();
        assert_eq!(shares, vec![d("0.34"), d("0.33"), d("0.33")]);
        // 0.10 split 2:1: exact 0.0666.. and 0.0333..; floors 0.06 and
        // 0.03, the cent to the larger remainder (the first, .0066 > .0033).
        let shares = allocate(d("0.10"), &[d("2"), d("1")], 2).unwrap();
        assert_eq!(shares, vec![d("0.07"), d("0.03")]);
        assert_eq!(allocate(d("1"), &[d("0"), d("0")], 2), None);
    }

    #[test]
    fn negative_totals_allocate_too() {
        let shares = allocate(d("-1.00"), &[d("1"), d("1"), d("1")], 2).unwrap();
        assert_eq!(shares.iter().sum::<Decimal>(), d("-1.00"));
    }

    proptest! {
        #[test]
        fn shares_always_add_up_to_the_total(
            cents in -1_000_000i64..1_000_000,
            weights in proptest::collection::vec(1i64..10_000_000, 1..40),
            scale in 0u32..9,
        ) {
            let total = Decimal::new(cents, 2);
            let weights: Vec<Decimal> = weights.into_iter().map(|w| Decimal::new(w, scale)).collect();
            let shares = allocate(total, &weights, 2).unwrap();
            prop_assert_eq!(shares.iter().sum::<Decimal>(), total);
            for s in &shares {
                prop_assert!(s.scale() <= 2 || s.normalize().scale() <= 2);
            }
        }
    }
}
