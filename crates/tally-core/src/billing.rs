//! Billing periods, coupons, credit-note splits and the invoice document:
//! the pure rules the billing module stores and prints.
//!
//! No storage here. The billing crate reads accounts and rated lines, calls
//! these functions, and writes what they return.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::invoice::{ComputedInvoice, DiscountLine, TaxLine};
use crate::{Currency, Money};

/// Why a billing rule refuses its input. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    /// A period label that is not `YYYY-MM`.
    #[error("period '{0}' is not a month: write it as YYYY-MM, e.g. 2026-10")]
    BadPeriod(String),
    /// A timezone name the tz database does not know.
    #[error("timezone '{0}' is unknown: use an IANA name such as Europe/Berlin or UTC")]
    BadTimezone(String),
    /// A billing day outside 1–28.
    #[error("billing day {0} is out of range: use 1 (calendar months) to 28")]
    BadBillingDay(u32),
    /// A coupon that cannot apply any more.
    #[error("coupon '{code}' expired after {last}: grant a new one")]
    CouponExpired {
        /// Coupon code.
        code: String,
        /// Its last billing period.
        last: String,
    },
    /// A coupon with no periods or a bad value.
    #[error("coupon '{code}': {message}")]
    BadCoupon {
        /// Coupon code.
        code: String,
        /// What is wrong.
        message: String,
    },
}

/// How an account pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PaymentMode {
    /// Pays in advance: top-ups credit a balance that usage draws down.
    Prepaid,
    /// Pays invoices after the period.
    Postpaid,
}

impl PaymentMode {
    /// `prepaid` or `postpaid`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMode::Prepaid => "prepaid",
            PaymentMode::Postpaid => "postpaid",
        }
    }
}

impl std::str::FromStr for PaymentMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "prepaid" => Ok(PaymentMode::Prepaid),
            "postpaid" => Ok(PaymentMode::Postpaid),
            other => Err(format!(
                "payment mode '{other}' is unknown: use prepaid or postpaid"
            )),
        }
    }
}

/// A month-long billing period, named by the month it starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeriodLabel {
    year: i32,
    month: u32,
}

impl PeriodLabel {
    /// The label of the month `index` months after January of year 0.
    fn from_index(index: i64) -> PeriodLabel {
        PeriodLabel {
            year: index.div_euclid(12) as i32,
            month: index.rem_euclid(12) as u32 + 1,
        }
    }

    /// Months since January of year 0: labels subtract into period counts.
    pub fn index(self) -> i64 {
        self.year as i64 * 12 + self.month as i64 - 1
    }

    /// The label `n` periods later (earlier when negative).
    pub fn plus(self, n: i64) -> PeriodLabel {
        PeriodLabel::from_index(self.index() + n)
    }

    /// The period that contains `t` for an account billed on `billing_day`
    /// in `tz`.
    pub fn containing(t: DateTime<Utc>, billing_day: u32, tz: Tz) -> PeriodLabel {
        let local = t.with_timezone(&tz);
        let this = PeriodLabel {
            year: local.year(),
            month: local.month(),
        };
        if local.day() >= billing_day {
            this
        } else {
            this.plus(-1)
        }
    }
}

impl std::str::FromStr for PeriodLabel {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BillingError::BadPeriod(s.to_string());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(PeriodLabel { year, month })
    }
}

impl TryFrom<String> for PeriodLabel {
    type Error = BillingError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PeriodLabel> for String {
    fn from(p: PeriodLabel) -> String {
        p.to_string()
    }
}

impl std::fmt::Display for PeriodLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Parses an IANA timezone name.
pub fn parse_timezone(name: &str) -> Result<Tz, BillingError> {
    name.parse::<Tz>()
        .map_err(|_| BillingError::BadTimezone(name.to_string()))
}

/// Checks a billing day.
pub fn check_billing_day(day: u32) -> Result<u32, BillingError> {
    if (1..=28).contains(&day) {
        Ok(day)
    } else {
        Err(BillingError::BadBillingDay(day))
    }
}

/// The instants a billing period covers: `[start, end)` in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BillingPeriod {
    /// Its label (`2026-10`).
    pub label: PeriodLabel,
    /// First instant.
    pub start: DateTime<Utc>,
    /// First instant after it.
    pub end: DateTime<Utc>,
}

/// Local midnight starting `date` in `tz`, as a UTC instant. Where a
/// daylight-saving change skips midnight, the period starts at the first
/// local instant that exists that day.
fn local_midnight(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    loop {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(x) | LocalResult::Ambiguous(x, _) => return x.with_timezone(&Utc),
            LocalResult::None => t += chrono::Duration::minutes(15),
        }
    }
}

impl BillingPeriod {
    /// The period `label` of an account billed on `billing_day` (1 means
    /// calendar months) with boundaries at local midnight in `tz`.
    pub fn new(
        label: PeriodLabel,
        billing_day: u32,
        tz: Tz,
    ) -> Result<BillingPeriod, BillingError> {
        let day = check_billing_day(billing_day)?;
        let date = |l: PeriodLabel| {
            NaiveDate::from_ymd_opt(l.year, l.month, day)
                .ok_or(BillingError::BadPeriod(l.to_string()))
        };
        Ok(BillingPeriod {
            label,
            start: local_midnight(date(label)?, tz),
            end: local_midnight(date(label.plus(1))?, tz),
        })
    }
}

/// A coupon granted to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Coupon {
    /// Its code, printed on the invoice.
    pub code: String,
    /// What it takes off.
    pub discount: crate::invoice::Discount,
    /// The first billing period it applies to.
    pub first_period: PeriodLabel,
    /// For how many periods.
    pub periods: u32,
}

impl Coupon {
    /// Checks a coupon being granted when `earliest_open` is the earliest
    /// period it could still reduce (see [`earliest_open_period`]): refuses
    /// one with no periods, a bad value, or one whose periods are all over.
    pub fn check_grant(&self, earliest_open: PeriodLabel) -> Result<(), BillingError> {
        let bad = |message: String| BillingError::BadCoupon {
            code: self.code.clone(),
            message,
        };
        if self.periods == 0 {
            return Err(bad("it must apply to at least one period".into()));
        }
        match &self.discount {
            crate::invoice::Discount::Percent(p)
                if *p <= Decimal::ZERO || *p > Decimal::ONE_HUNDRED =>
            {
                return Err(bad(format!(
                    "a percentage must be above 0 and at most 100, got {p}"
                )));
            }
            crate::invoice::Discount::Fixed(f) if *f <= Decimal::ZERO => {
                return Err(bad(format!("a fixed amount must be positive, got {f}")));
            }
            _ => {}
        }
        if self.last_period() < earliest_open {
            return Err(BillingError::CouponExpired {
                code: self.code.clone(),
                last: self.last_period().to_string(),
            });
        }
        Ok(())
    }

    /// Its last billing period.
    pub fn last_period(&self) -> PeriodLabel {
        self.first_period.plus(self.periods as i64 - 1)
    }

    /// Whether it applies to `period`.
    pub fn applies_to(&self, period: PeriodLabel) -> bool {
        period >= self.first_period && period <= self.last_period()
    }
}

/// The earliest period a new coupon can still reduce: the period before
/// `current` (usually not invoiced yet when it ends) unless the account's
/// invoices are finalized up to `last_finalized`; a finalized invoice never
/// changes, so a coupon can only reach periods after it.
pub fn earliest_open_period(
    current: PeriodLabel,
    last_finalized: Option<PeriodLabel>,
) -> PeriodLabel {
    let previous = current.plus(-1);
    match last_finalized {
        Some(f) if f >= previous => f.plus(1),
        _ => previous,
    }
}

/// A credit note's amount split into net and tax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditSplit {
    /// The part that reverses revenue.
    pub net: Decimal,
    /// The part that reverses tax.
    pub tax: Decimal,
}

/// Splits a credit of `total` (tax included) on an invoice whose total is
/// `invoice_total` of which `invoice_tax` is tax: the tax part is the
/// invoice's tax share of the credit, rounded half away from zero to the
/// minor unit; the net part is the rest, so the two always add up exactly.
pub fn split_credit(
    total: Decimal,
    invoice_total: Decimal,
    invoice_tax: Decimal,
    currency: Currency,
) -> CreditSplit {
    let tax = if invoice_total.is_zero() {
        Decimal::ZERO
    } else {
        Money::new(total * invoice_tax / invoice_total, currency)
            .round_to_minor_unit()
            .amount
    };
    CreditSplit {
        net: total - tax,
        tax,
    }
}

/// A party on an invoice: the operator (seller) or the account (buyer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Party {
    /// Legal name (an account's contact may leave it to the account name).
    #[serde(default)]
    pub name: String,
    /// Postal address, one line per element.
    #[serde(default)]
    pub address: Vec<String>,
    /// Billing e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// VAT or other tax identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<String>,
}

/// One printed line of an invoice document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DocumentLine {
    /// Line number, from 1.
    pub line_no: u32,
    /// Keystone project.
    pub project_id: String,
    /// Meter (the service).
    pub meter: String,
    /// Plan that priced it.
    pub plan_id: String,
    /// Start of the service period.
    pub service_start: DateTime<Utc>,
    /// End of the service period.
    pub service_end: DateTime<Utc>,
    /// Quantity, full precision.
    pub quantity: Decimal,
    /// Unit of the quantity.
    pub unit: String,
    /// Price per unit, when one price applied throughout.
    pub unit_price: Option<Decimal>,
    /// Amount, rounded to the minor unit.
    pub amount: Decimal,
    /// The rated lines' sum before rounding: what later corrections of the
    /// same service period are measured against.
    pub exact_amount: Decimal,
    /// Late usage (or re-rating) of an earlier, already finalized period:
    /// the difference between what that period's lines now say and what
    /// was invoiced for it.
    pub correction: bool,
}

/// Everything an invoice says, as issued: what `tally invoice show` prints
/// and what the PDF and the dashboard render.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvoiceDocument {
    /// Tally's id of the invoice.
    pub invoice_id: String,
    /// The gapless number, once finalized.
    pub number: Option<String>,
    /// `draft`, `finalized`, `paid` or `void`.
    pub status: String,
    /// The billing account.
    pub account_id: String,
    /// The operator.
    pub seller: Party,
    /// The customer.
    pub buyer: Party,
    /// The billing period.
    pub period: String,
    /// Its first instant.
    pub period_start: DateTime<Utc>,
    /// Its end.
    pub period_end: DateTime<Utc>,
    /// Invoice currency.
    pub currency: Currency,
    /// When it was issued (finalized).
    pub issued_at: Option<DateTime<Utc>>,
    /// When payment is due.
    pub due_at: Option<DateTime<Utc>>,
    /// Lines.
    pub lines: Vec<DocumentLine>,
    /// Σ line amounts.
    pub subtotal: Decimal,
    /// Coupons applied.
    pub discounts: Vec<DocumentDiscount>,
    /// Minimum-commitment top-up.
    pub commitment_top_up: Decimal,
    /// The taxable base.
    pub taxable: Decimal,
    /// Taxes.
    pub taxes: Vec<DocumentTax>,
    /// Total due.
    pub total: Decimal,
}

/// A coupon as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DocumentDiscount {
    /// Code.
    pub code: String,
    /// Amount taken off.
    pub amount: Decimal,
}

/// A tax as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DocumentTax {
    /// Name.
    pub name: String,
    /// Rate as a fraction.
    pub rate: Decimal,
    /// Base.
    pub base: Decimal,
    /// Amount.
    pub amount: Decimal,
}

impl InvoiceDocument {
    /// The document's figures from a computed invoice (lines numbered
    /// from 1 in the computed order). Status, number and dates are the
    /// caller's.
    #[allow(clippy::too_many_arguments)]
    pub fn from_computed(
        invoice_id: String,
        account_id: String,
        seller: Party,
        buyer: Party,
        period: &BillingPeriod,
        computed: &ComputedInvoice,
    ) -> InvoiceDocument {
        InvoiceDocument {
            invoice_id,
            number: None,
            status: "draft".into(),
            account_id,
            seller,
            buyer,
            period: period.label.to_string(),
            period_start: period.start,
            period_end: period.end,
            currency: computed.currency,
            issued_at: None,
            due_at: None,
            lines: computed
                .lines
                .iter()
                .enumerate()
                .map(|(i, l)| DocumentLine {
                    line_no: i as u32 + 1,
                    project_id: l.charge.project_id.clone(),
                    meter: l.charge.meter.clone(),
                    plan_id: l.charge.plan_id.clone(),
                    service_start: l.charge.service_start,
                    service_end: l.charge.service_end,
                    quantity: l.charge.quantity.normalize(),
                    unit: l.charge.unit.clone(),
                    unit_price: l.charge.unit_price.map(|p| p.normalize()),
                    amount: l.rounded_amount,
                    exact_amount: l.charge.amount.normalize(),
                    correction: l.charge.correction,
                })
                .collect(),
            subtotal: computed.subtotal,
            discounts: computed
                .discounts
                .iter()
                .map(|DiscountLine { code, amount }| DocumentDiscount {
                    code: code.clone(),
                    amount: *amount,
                })
                .collect(),
            commitment_top_up: computed.commitment_top_up,
            taxable: computed.taxable,
            taxes: computed
                .taxes
                .iter()
                .map(
                    |TaxLine {
                         name,
                         rate,
                         base,
                         amount,
                     }| DocumentTax {
                        name: name.clone(),
                        rate: *rate,
                        base: *base,
                        amount: *amount,
                    },
                )
                .collect(),
            total: computed.total,
        }
    }

    /// Σ taxes.
    pub fn tax_total(&self) -> Decimal {
        self.taxes.iter().map(|t| t.amount).sum()
    }

    /// Σ discounts.
    pub fn discount_total(&self) -> Decimal {
        self.discounts.iter().map(|d| d.amount).sum()
    }

    /// Asserts the document adds up: lines to the subtotal and the figures
    /// to the total.
    pub fn check(&self) -> Result<(), String> {
        let lines: Decimal = self.lines.iter().map(|l| l.amount).sum();
        if lines != self.subtotal {
            return Err(format!(
                "lines sum to {lines}, subtotal is {}",
                self.subtotal
            ));
        }
        let sum = self.subtotal - self.discount_total() + self.commitment_top_up + self.tax_total();
        if sum != self.total {
            return Err(format!("figures sum to {sum}, total is {}", self.total));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::{Discount, InvoiceInput, TaxRate, compute_invoice, group_charges};

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }
    fn label(s: &str) -> PeriodLabel {
        s.parse().unwrap()
    }

    #[test]
    fn calendar_months_in_utc_and_in_a_timezone() {
        let p = BillingPeriod::new(label("2026-10"), 1, Tz::UTC).unwrap();
        assert_eq!(p.start.to_rfc3339(), "2026-10-01T00:00:00+00:00");
        assert_eq!(p.end.to_rfc3339(), "2026-11-01T00:00:00+00:00");
        // Berlin is UTC+2 on 1 October and UTC+1 on 1 November (DST ends
        // on 25 October): the month is 745 hours long, not 744.
        let berlin = parse_timezone("Europe/Berlin").unwrap();
        let p = BillingPeriod::new(label("2026-10"), 1, berlin).unwrap();
        assert_eq!(p.start.to_rfc3339(), "2026-09-30T22:00:00+00:00");
        assert_eq!(p.end.to_rfc3339(), "2026-10-31T23:00:00+00:00");
        assert_eq!((p.end - p.start).num_hours(), 745);
        // December rolls into January of the next year.
        let p = BillingPeriod::new(label("2026-12"), 1, Tz::UTC).unwrap();
        assert_eq!(p.end.to_rfc3339(), "2027-01-01T00:00:00+00:00");
    }

    #[test]
    fn anniversary_periods_start_on_the_billing_day() {
        let p = BillingPeriod::new(label("2026-10"), 15, Tz::UTC).unwrap();
        assert_eq!(p.start.to_rfc3339(), "2026-10-15T00:00:00+00:00");
        assert_eq!(p.end.to_rfc3339(), "2026-11-15T00:00:00+00:00");
        let t = "2026-11-14T23:59:59Z".parse().unwrap();
        assert_eq!(PeriodLabel::containing(t, 15, Tz::UTC), label("2026-10"));
        let t = "2026-11-15T00:00:00Z".parse().unwrap();
        assert_eq!(PeriodLabel::containing(t, 15, Tz::UTC), label("2026-11"));
        assert_eq!(
            BillingPeriod::new(label("2026-10"), 29, Tz::UTC),
            Err(BillingError::BadBillingDay(29))
        );
    }

    #[test]
    fn bad_labels_and_timezones_say_how_to_write_them() {
        for bad in ["2026-13", "2026-1", "26-10", "october", "2026-00"] {
            let e = bad.parse::<PeriodLabel>().unwrap_err().to_string();
            assert!(e.contains("YYYY-MM"), "{bad}: {e}");
        }
        let e = parse_timezone("Mars/Olympus").unwrap_err().to_string();
        assert!(e.contains("IANA"), "{e}");
        assert_eq!(label("2026-01").plus(-1).to_string(), "2025-12");
    }

    #[test]
    fn coupons_apply_for_their_periods_and_expired_ones_are_refused() {
        let c = Coupon {
            code: "WELCOME".into(),
            discount: Discount::Percent(d("10")),
            first_period: label("2026-09"),
            periods: 2,
        };
        assert!(!c.applies_to(label("2026-08")));
        assert!(c.applies_to(label("2026-09")));
        assert!(c.applies_to(label("2026-10")));
        assert!(!c.applies_to(label("2026-11")));
        // Granted during November for September and October: October is
        // still open unless its invoice is finalized.
        let open = earliest_open_period(label("2026-11"), None);
        assert_eq!(open, label("2026-10"));
        assert!(c.check_grant(open).is_ok());
        let open = earliest_open_period(label("2026-11"), Some(label("2026-10")));
        assert_eq!(open, label("2026-11"));
        let e = c.check_grant(open).unwrap_err().to_string();
        assert_eq!(e, "coupon 'WELCOME' expired after 2026-10: grant a new one");
        let zero = Coupon {
            periods: 0,
            ..c.clone()
        };
        assert!(zero.check_grant(label("2026-09")).is_err());
        let negative = Coupon {
            discount: Discount::Fixed(d("-1")),
            ..c
        };
        assert!(negative.check_grant(label("2026-09")).is_err());
    }

    #[test]
    fn credit_splits_always_add_up() {
        let eur: Currency = "EUR".parse().unwrap();
        // An invoice of 119.00 with 19.00 tax: crediting 10.00 returns 1.60
        // of tax (1.5966… rounded) and 8.40 of revenue.
        let s = split_credit(d("10.00"), d("119.00"), d("19.00"), eur);
        assert_eq!((s.net, s.tax), (d("8.40"), d("1.60")));
        // Crediting the whole invoice returns all of its tax.
        let s = split_credit(d("119.00"), d("119.00"), d("19.00"), eur);
        assert_eq!((s.net, s.tax), (d("100.00"), d("19.00")));
        let s = split_credit(d("5"), d("0"), d("0"), eur);
        assert_eq!((s.net, s.tax), (d("5"), d("0")));
    }

    #[test]
    fn an_invoice_document_snapshot() {
        let start: DateTime<Utc> = "2026-10-01T00:00:00Z".parse().unwrap();
        let line = |project: &str, meter: &str, q: &str, price: &str| crate::RatedLine {
            project_id: project.into(),
            resource_id: "r".into(),
            meter: meter.into(),
            group: Default::default(),
            period_start: start,
            period_end: start + chrono::Duration::hours(744),
            quantity: d(q),
            unit: "hour".into(),
            unit_price: Some(d(price)),
            amount: d(q) * d(price),
            currency: "EUR".into(),
            plan_id: "standard".into(),
            plan_version: 1,
            rule: "rules[0]".into(),
            raw_count: 1,
            segments: vec![],
            attributes: Default::default(),
            error: None,
        };
        let computed = compute_invoice(&InvoiceInput {
            currency: "EUR".parse().unwrap(),
            charges: group_charges(&[
                line("web", "instance.hours", "744", "0.0125"),
                line("web", "volume.gib_hours", "74400", "0.0001"),
            ]),
            discounts: vec![("WELCOME".into(), Discount::Percent(d("10")))],
            minimum_commitment: None,
            taxes: vec![TaxRate {
                name: "VAT 19%".into(),
                rate: d("0.19"),
            }],
        })
        .unwrap();
        let period = BillingPeriod::new(label("2026-10"), 1, Tz::UTC).unwrap();
        let doc = InvoiceDocument::from_computed(
            "inv_1".into(),
            "acme".into(),
            Party {
                name: "Example Cloud GmbH".into(),
                address: vec!["Hauptstraße 1".into(), "10115 Berlin".into()],
                email: Some("billing@cloud.example".into()),
                tax_id: Some("DE123456789".into()),
            },
            Party {
                name: "Acme Ltd".into(),
                ..Party::default()
            },
            &period,
            &computed,
        );
        doc.check().unwrap();
        // 744 × 0.0125 = 9.30; 74400 × 0.0001 = 7.44; subtotal 16.74;
        // 10% off = 1.674 → 1.67; taxable 15.07; VAT 2.8633 → 2.86.
        assert_eq!(doc.total, d("17.93"));
        insta::assert_json_snapshot!(doc);
    }
}
