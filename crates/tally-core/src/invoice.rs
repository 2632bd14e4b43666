//! Invoice math: from grouped charges to a total a finance team can check.
//!
//! Pure arithmetic, no storage: the billing module groups rated lines into
//! [`Charge`]s and stores what [`compute_invoice`] returns. The order of
//! operations is fixed and documented in `docs/rounding.md`:
//!
//! 1. each charge's full-precision amount is rounded once to the minor unit
//!    (half away from zero); the subtotal is the sum of rounded lines;
//! 2. discounts apply in the order given, a percentage of what remains
//!    (rounded once) or a fixed amount, never below zero;
//! 3. a minimum commitment tops the discounted subtotal up to its level;
//! 4. each tax rate applies to that taxable base, rounded once;
//! 5. the total is base + taxes.
//!
//! Every figure is a sum of rounded figures, so the invariant "the lines add
//! up to the total" holds exactly, and [`ComputedInvoice::check`] asserts it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{Currency, Money};

/// One charge on an invoice before rounding: rated lines of one project,
/// meter and plan (and, for late usage, one original service period), summed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Charge {
    /// The Keystone project the usage belongs to.
    pub project_id: String,
    /// The rated meter.
    pub meter: String,
    /// The price plan that priced the usage; a plan change inside a period
    /// gives one charge per plan.
    pub plan_id: String,
    /// Total quantity, full precision.
    pub quantity: Decimal,
    /// Unit of the quantity.
    pub unit: String,
    /// The price per unit when every line behind the charge had the same
    /// one; `None` for tiers, flat fees or mixed prices.
    pub unit_price: Option<Decimal>,
    /// Sum of the rated lines' amounts, full precision.
    pub amount: Decimal,
    /// Start of the service period the usage happened in (the earliest
    /// rating period behind the charge).
    pub service_start: DateTime<Utc>,
    /// End of that service period (the latest rating period's end).
    pub service_end: DateTime<Utc>,
    /// Late usage of an already finalized period.
    pub correction: bool,
}

/// Sums rated lines into invoice charges, one per (project, meter, plan),
/// at full precision; rounding happens once per charge in
/// [`compute_invoice`]. Lines arrive in any order and one at a time, so a
/// month of lines is never held in memory. Lines in error or of another
/// currency are the caller's to refuse before [`ChargeGrouper::add`].
#[derive(Debug, Default)]
pub struct ChargeGrouper {
    groups: std::collections::BTreeMap<(String, String, String), (Charge, bool)>,
}

impl ChargeGrouper {
    /// An empty grouper.
    pub fn new() -> ChargeGrouper {
        ChargeGrouper::default()
    }

    /// Adds one rated line.
    pub fn add(&mut self, l: &crate::RatedLine) {
        let key = (l.project_id.clone(), l.meter.clone(), l.plan_id.clone());
        let (c, uniform) = self.groups.entry(key).or_insert_with(|| {
            (
                Charge {
                    project_id: l.project_id.clone(),
                    meter: l.meter.clone(),
                    plan_id: l.plan_id.clone(),
                    quantity: Decimal::ZERO,
                    unit: l.unit.clone(),
                    unit_price: l.unit_price,
                    amount: Decimal::ZERO,
                    service_start: l.period_start,
                    service_end: l.period_end,
                    correction: false,
                },
                true,
            )
        });
        c.quantity += l.quantity;
        c.amount += l.amount;
        c.service_start = c.service_start.min(l.period_start);
        c.service_end = c.service_end.max(l.period_end);
        if *uniform && c.unit_price != l.unit_price {
            *uniform = false;
            c.unit_price = None;
        }
    }

    /// The charges, in project, meter, plan order.
    pub fn finish(self) -> Vec<Charge> {
        self.groups.into_values().map(|(c, _)| c).collect()
    }
}

/// Groups rated lines at once (see [`ChargeGrouper`]).
pub fn group_charges<'a>(lines: impl IntoIterator<Item = &'a crate::RatedLine>) -> Vec<Charge> {
    let mut g = ChargeGrouper::new();
    for l in lines {
        g.add(l);
    }
    g.finish()
}

/// A discount (coupon) applied to a subtotal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Discount {
    /// A percentage (0–100) of what remains after earlier discounts.
    Percent(Decimal),
    /// A fixed amount in the invoice currency, capped at what remains.
    Fixed(Decimal),
}

/// A tax rate applied to the taxable base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaxRate {
    /// Name shown on the invoice (`VAT 19%`).
    pub name: String,
    /// The rate as a fraction (`0.19`).
    pub rate: Decimal,
}

/// What an invoice is computed from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvoiceInput {
    /// The invoice currency.
    pub currency: Currency,
    /// Charges, in the order they are printed.
    pub charges: Vec<Charge>,
    /// Discounts by coupon code, applied in order.
    pub discounts: Vec<(String, Discount)>,
    /// The least the period costs before tax, if the account committed to one.
    pub minimum_commitment: Option<Decimal>,
    /// Taxes.
    pub taxes: Vec<TaxRate>,
}

/// A printed invoice line: a charge with its rounded amount.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvoiceLine {
    /// The charge.
    #[serde(flatten)]
    pub charge: Charge,
    /// The amount rounded to the minor unit.
    pub rounded_amount: Decimal,
}

/// A discount as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiscountLine {
    /// Coupon code.
    pub code: String,
    /// The amount taken off (positive).
    pub amount: Decimal,
}

/// A tax as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaxLine {
    /// Tax name.
    pub name: String,
    /// Rate.
    pub rate: Decimal,
    /// The base it applied to.
    pub base: Decimal,
    /// The tax, rounded.
    pub amount: Decimal,
}

/// A computed invoice: every figure rounded to the minor unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComputedInvoice {
    /// Currency.
    pub currency: Currency,
    /// Lines.
    pub lines: Vec<InvoiceLine>,
    /// Σ rounded line amounts.
    pub subtotal: Decimal,
    /// Discounts applied.
    pub discounts: Vec<DiscountLine>,
    /// Minimum-commitment top-up (0 when usage reached it).
    pub commitment_top_up: Decimal,
    /// subtotal − discounts + top-up.
    pub taxable: Decimal,
    /// Taxes.
    pub taxes: Vec<TaxLine>,
    /// taxable + Σ taxes.
    pub total: Decimal,
}

/// Why an invoice cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    /// A percentage outside 0–100.
    #[error("discount '{code}' is {percent}%: a percentage discount must be between 0 and 100")]
    BadPercent {
        /// Coupon code.
        code: String,
        /// The percentage.
        percent: Decimal,
    },
    /// A negative fixed discount, commitment or tax rate.
    #[error("{what} is negative ({value}): it must be zero or more")]
    Negative {
        /// What.
        what: String,
        /// The value.
        value: Decimal,
    },
    /// Arithmetic overflow.
    #[error("invoice amounts overflow")]
    Overflow,
    /// An invariant does not hold (a bug, never bad input).
    #[error("invoice invariant broken: {0}")]
    Invariant(String),
}

fn round(amount: Decimal, currency: Currency) -> Decimal {
    Money::new(amount, currency).round_to_minor_unit().amount
}

/// Computes an invoice (see the module documentation for the order).
pub fn compute_invoice(input: &InvoiceInput) -> Result<ComputedInvoice, InvoiceError> {
    let currency = input.currency;
    let lines: Vec<InvoiceLine> = input
        .charges
        .iter()
        .map(|c| InvoiceLine {
            rounded_amount: round(c.amount, currency),
            charge: c.clone(),
        })
        .collect();
    let subtotal = lines
        .iter()
        .try_fold(Decimal::ZERO, |acc, l| acc.checked_add(l.rounded_amount))
        .ok_or(InvoiceError::Overflow)?;
    let mut remaining = subtotal.max(Decimal::ZERO);
    let mut discounts = Vec::new();
    for (code, d) in &input.discounts {
        let amount = match d {
            Discount::Percent(p) if *p < Decimal::ZERO || *p > Decimal::ONE_HUNDRED => {
                return Err(InvoiceError::BadPercent {
                    code: code.clone(),
                    percent: *p,
                });
            }
            Discount::Percent(p) => round(remaining * *p / Decimal::ONE_HUNDRED, currency),
            Discount::Fixed(f) if *f < Decimal::ZERO => {
                return Err(InvoiceError::Negative {
                    what: format!("discount '{code}'"),
                    value: *f,
                });
            }
            Discount::Fixed(f) => round(*f, currency),
        }
        .min(remaining);
        remaining -= amount;
        discounts.push(DiscountLine {
            code: code.clone(),
            amount,
        });
    }
    let discounted = subtotal - discounts.iter().map(|d| d.amount).sum::<Decimal>();
    let commitment_top_up = match input.minimum_commitment {
        Some(m) if m < Decimal::ZERO => {
            return Err(InvoiceError::Negative {
                what: "the minimum commitment".into(),
                value: m,
            });
        }
        Some(m) => (round(m, currency) - discounted).max(Decimal::ZERO),
        None => Decimal::ZERO,
    };
    let taxable = discounted + commitment_top_up;
    let mut taxes = Vec::new();
    for t in &input.taxes {
        if t.rate < Decimal::ZERO {
            return Err(InvoiceError::Negative {
                what: format!("tax rate '{}'", t.name),
                value: t.rate,
            });
        }
        let amount = round(
            taxable.checked_mul(t.rate).ok_or(InvoiceError::Overflow)?,
            currency,
        );
        taxes.push(TaxLine {
            name: t.name.clone(),
            rate: t.rate,
            base: taxable,
            amount,
        });
    }
    let total = taxable + taxes.iter().map(|t| t.amount).sum::<Decimal>();
    let invoice = ComputedInvoice {
        currency,
        lines,
        subtotal,
        discounts,
        commitment_top_up,
        taxable,
        taxes,
        total,
    };
    invoice.check()?;
    Ok(invoice)
}

impl ComputedInvoice {
    /// Asserts the invoice's invariants: the printed figures add up to the
    /// total, and every figure is already rounded to the minor unit.
    pub fn check(&self) -> Result<(), InvoiceError> {
        let broken = |m: String| Err(InvoiceError::Invariant(m));
        let lines: Decimal = self.lines.iter().map(|l| l.rounded_amount).sum();
        if lines != self.subtotal {
            return broken(format!(
                "lines sum to {lines}, subtotal is {}",
                self.subtotal
            ));
        }
        let discounts: Decimal = self.discounts.iter().map(|d| d.amount).sum();
        let taxes: Decimal = self.taxes.iter().map(|t| t.amount).sum();
        let sum = self.subtotal - discounts + self.commitment_top_up + taxes;
        if sum != self.total {
            return broken(format!("figures sum to {sum}, total is {}", self.total));
        }
        let all = self
            .lines
            .iter()
            .map(|l| l.rounded_amount)
            .chain(self.discounts.iter().map(|d| d.amount))
            .chain(self.taxes.iter().map(|t| t.amount))
            .chain([self.commitment_top_up, self.total]);
        for v in all {
            if round(v, self.currency) != v {
                return broken(format!("{v} is not rounded to the minor unit"));
            }
        }
        Ok(())
    }
}

/// What may still be credited on an invoice of `total` after earlier
/// credit notes of `credited`; a credit note of `amount` must not exceed it.
pub fn check_credit(total: Decimal, credited: Decimal, amount: Decimal) -> Result<(), String> {
    let remaining = total - credited;
    if amount <= Decimal::ZERO {
        return Err(format!("a credit note must be positive, got {amount}"));
    }
    if amount > remaining {
        return Err(format!(
            "a credit note of {amount} exceeds what remains of the invoice ({remaining} of {total})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn charge(amount: &str) -> Charge {
        Charge {
            project_id: "p1".into(),
            meter: "vcpu.hours".into(),
            plan_id: "standard".into(),
            quantity: d("1"),
            unit: "vCPU-hour".into(),
            unit_price: None,
            amount: d(amount),
            service_start: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
            service_end: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            correction: false,
        }
    }

    fn eur() -> Currency {
        "EUR".parse().unwrap()
    }

    #[test]
    fn a_worked_invoice_with_coupons_commitment_and_tax() {
        // Lines 10.004 → 10.00 and 5.125 → 5.13: subtotal 15.13.
        // 10% coupon: 1.513 → 1.51; fixed 2 → 2.00; discounted 11.62.
        // Commitment 12 → top-up 0.38; taxable 12.00; VAT 19% → 2.28.
        let inv = compute_invoice(&InvoiceInput {
            currency: eur(),
            charges: vec![charge("10.004"), charge("5.125")],
            discounts: vec![
                ("TEN".into(), Discount::Percent(d("10"))),
                ("TWO".into(), Discount::Fixed(d("2"))),
            ],
            minimum_commitment: Some(d("12")),
            taxes: vec![TaxRate {
                name: "VAT 19%".into(),
                rate: d("0.19"),
            }],
        })
        .unwrap();
        assert_eq!(inv.subtotal, d("15.13"));
        assert_eq!(inv.discounts[0].amount, d("1.51"));
        assert_eq!(inv.discounts[1].amount, d("2.00"));
        assert_eq!(inv.commitment_top_up, d("0.38"));
        assert_eq!(inv.taxable, d("12.00"));
        assert_eq!(inv.taxes[0].amount, d("2.28"));
        assert_eq!(inv.total, d("14.28"));
    }

    #[test]
    fn discounts_never_take_the_total_below_zero_and_bad_ones_are_refused() {
        let inv = compute_invoice(&InvoiceInput {
            currency: eur(),
            charges: vec![charge("3")],
            discounts: vec![("BIG".into(), Discount::Fixed(d("50")))],
            minimum_commitment: None,
            taxes: vec![],
        })
        .unwrap();
        assert_eq!(inv.discounts[0].amount, d("3"));
        assert_eq!(inv.total, d("0"));
        let bad = compute_invoice(&InvoiceInput {
            currency: eur(),
            charges: vec![charge("3")],
            discounts: vec![("X".into(), Discount::Percent(d("120")))],
            minimum_commitment: None,
            taxes: vec![],
        });
        assert!(matches!(bad, Err(InvoiceError::BadPercent { .. })));
    }

    #[test]
    fn rated_lines_group_per_project_meter_and_plan_at_full_precision() {
        let start = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
        let line = |project: &str, meter: &str, q: &str, a: &str| crate::RatedLine {
            project_id: project.into(),
            resource_id: "r".into(),
            meter: meter.into(),
            group: Default::default(),
            period_start: start,
            period_end: start + chrono::Duration::hours(1),
            quantity: d(q),
            unit: "hour".into(),
            unit_price: None,
            amount: d(a),
            currency: "EUR".into(),
            plan_id: "p".into(),
            plan_version: 1,
            rule: "rules[0]".into(),
            raw_count: 1,
            segments: vec![],
            attributes: Default::default(),
            error: None,
        };
        let lines = [
            line("p2", "vcpu.hours", "1", "0.004"),
            line("p1", "vcpu.hours", "0.5", "0.0025"),
            line("p1", "vcpu.hours", "0.5", "0.0025"),
            line("p1", "instance.hours", "1", "0.01"),
        ];
        let charges = group_charges(&lines);
        let keys: Vec<(&str, &str, String)> = charges
            .iter()
            .map(|c| {
                (
                    c.project_id.as_str(),
                    c.meter.as_str(),
                    c.amount.to_string(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                ("p1", "instance.hours", "0.01".to_string()),
                ("p1", "vcpu.hours", "0.0050".to_string()),
                ("p2", "vcpu.hours", "0.004".to_string()),
            ]
        );
        // Two half-cent lines make one cent, not two rounded-away halves.
        let inv = compute_invoice(&InvoiceInput {
            currency: eur(),
            charges,
            discounts: vec![],
            minimum_commitment: None,
            taxes: vec![],
        })
        .unwrap();
        assert_eq!(inv.lines[1].rounded_amount, d("0.01"));
        assert_eq!(inv.total, d("0.02"));

        // A plan change inside the period splits the charge, each part with
        // its own service period; a price shared by every line is kept.
        let priced = |plan: &str, hour: i64, price: &str| crate::RatedLine {
            plan_id: plan.into(),
            period_start: start + chrono::Duration::hours(hour),
            period_end: start + chrono::Duration::hours(hour + 1),
            unit_price: Some(d(price)),
            amount: d(price),
            ..lines[0].clone()
        };
        let split = group_charges(&[
            priced("a", 0, "0.01"),
            priced("a", 5, "0.01"),
            priced("b", 6, "0.02"),
            priced("b", 7, "0.03"),
        ]);
        assert_eq!(split.len(), 2);
        assert_eq!(
            (split[0].plan_id.as_str(), split[0].unit_price),
            ("a", Some(d("0.01")))
        );
        assert_eq!(split[0].service_start, start);
        assert_eq!(split[0].service_end, start + chrono::Duration::hours(6));
        assert_eq!(
            (split[1].plan_id.as_str(), split[1].unit_price),
            ("b", None)
        );
        assert_eq!(split[1].service_start, start + chrono::Duration::hours(6));
        assert_eq!(split[1].amount, d("0.05"));
    }

    #[test]
    fn credit_notes_never_exceed_what_remains() {
        assert!(check_credit(d("10"), d("4"), d("6")).is_ok());
        let e = check_credit(d("10"), d("4"), d("6.01")).unwrap_err();
        assert!(e.contains("exceeds what remains"), "{e}");
        assert!(check_credit(d("10"), d("0"), d("0")).is_err());
    }

    proptest! {
        /// Whatever the charges, coupons, commitment and taxes, the printed
        /// figures add up to the total and every figure is rounded.
        #[test]
        fn invoices_always_add_up(
            amounts in proptest::collection::vec(-1_000_000i64..100_000_000, 0..20),
            percent in 0u32..=100,
            fixed in 0i64..10_000,
            commitment in proptest::option::of(0i64..100_000),
            rate in 0u32..300,
            jpy in any::<bool>(),
        ) {
            let currency: Currency = if jpy { "JPY" } else { "EUR" }.parse().unwrap();
            let input = InvoiceInput {
                currency,
                charges: amounts.iter().map(|a| Charge { amount: Decimal::new(*a, 4), ..charge("0") }).collect(),
                discounts: vec![
                    ("P".into(), Discount::Percent(Decimal::from(percent))),
                    ("F".into(), Discount::Fixed(Decimal::new(fixed, 2))),
                ],
                minimum_commitment: commitment.map(|c| Decimal::new(c, 2)),
                taxes: vec![
                    TaxRate { name: "a".into(), rate: Decimal::new(i64::from(rate), 3) },
                    TaxRate { name: "b".into(), rate: Decimal::new(7, 2) },
                ],
            };
            let inv = compute_invoice(&input).unwrap();
            prop_assert!(inv.check().is_ok());
            prop_assert!(inv.discounts.iter().all(|d| d.amount >= Decimal::ZERO));
            if let Some(c) = input.minimum_commitment {
                prop_assert!(inv.taxable >= round(c, currency));
            }
        }
    }
}
