//! Invoices: runs that build drafts from rated lines, finalization with
//! gapless numbers, payment, void and credit notes.
//!
//! Life of an invoice: an invoice run writes a `draft` per account and
//! period (one row per (account, period), so two runs at once still give
//! one invoice); a later run regenerates the draft; `finalize` numbers and
//! freezes it and posts it to the ledger; after that it is only ever paid,
//! voided or credited, each recorded beside it. Triggers refuse any change
//! to a finalized invoice or its lines (see the 0005 migrations).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tally_core::Money;
use tally_core::billing::{
    BillingPeriod, DocumentLine, InvoiceDocument, Party, PaymentMode, PeriodLabel, split_credit,
};
use tally_core::invoice::{Charge, ChargeGrouper, InvoiceInput, check_credit, compute_invoice};
use tally_core::ledger::{LedgerTransaction, TransactionKind};
use tally_db::Database;
use tally_store::objects::RawObjects;

use tally_rate::plans::Owners;

use crate::accounts::{Account, list_accounts};
use crate::{AccountScope, BillingError, decimal, instant, ledger};

/// Operator-wide settings of invoicing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceSettings {
    /// The operator, printed as seller on every invoice.
    pub seller: Party,
    /// The number series of credit notes (`CN` gives `CN-000001`).
    pub credit_note_series: String,
    /// How many finalized periods back an invoice run looks for late or
    /// re-rated usage, which it invoices as correction lines.
    pub correction_periods: u32,
}

impl Default for InvoiceSettings {
    fn default() -> Self {
        InvoiceSettings {
            seller: Party::default(),
            credit_note_series: "CN".into(),
            correction_periods: 3,
        }
    }
}

/// What an invoice run did for one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunOutcome {
    /// The account.
    pub account_id: String,
    /// Its invoice for the period, when there is one.
    pub invoice_id: Option<String>,
    /// `created`, `regenerated`, `finalized` (left as issued) or `blocked`.
    pub outcome: String,
    /// The draft's total.
    pub total: Option<Decimal>,
    /// Why it was blocked.
    pub message: Option<String>,
}

/// What an invoice run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunSummary {
    /// The period.
    pub period: String,
    /// One outcome per account, by account id.
    pub accounts: Vec<RunOutcome>,
    /// Rated lines read.
    pub lines_read: u64,
    /// Lines of projects no account owns (see the unbilled usage report).
    pub unbilled_lines: u64,
}

/// The id of an account's invoice for a period: deterministic, so two
/// runs at once address the same row.
pub fn invoice_id(account_id: &str, period: PeriodLabel) -> String {
    format!("{account_id}-{period}")
}

struct Pending {
    account: Account,
    period: BillingPeriod,
    grouper: ChargeGrouper,
    /// Earlier periods whose invoices are finalized, with their lines as
    /// they are now: the source of correction lines.
    finalized: Vec<(BillingPeriod, ChargeGrouper)>,
    lines: u64,
    blocked: Option<String>,
}

impl Pending {
    fn grouper_for(&mut self, t: DateTime<Utc>) -> Option<&mut ChargeGrouper> {
        if t >= self.period.start && t < self.period.end {
            return Some(&mut self.grouper);
        }
        self.finalized
            .iter_mut()
            .find(|(p, _)| t >= p.start && t < p.end)
            .map(|(_, g)| g)
    }
}

/// Builds or regenerates the draft invoice of every account (or of the
/// accounts named) for `label`. Refuses a period that has not ended for
/// some account, or that is not fully rated; accounts whose lines cannot
/// be invoiced (priced in error, another currency) are reported blocked
/// and the others are invoiced.
pub async fn run_invoices(
    db: &Database,
    rated: &RawObjects,
    settings: &InvoiceSettings,
    label: PeriodLabel,
    only: Option<&[String]>,
    now: DateTime<Utc>,
) -> Result<RunSummary, BillingError> {
    let mut accounts = list_accounts(db, &AccountScope::All).await?;
    if let Some(only) = only {
        for id in only {
            if !accounts.iter().any(|a| &a.spec.account_id == id) {
                return Err(BillingError::UnknownAccount(id.clone()));
            }
        }
        accounts.retain(|a| only.contains(&a.spec.account_id));
    }
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    for account in accounts {
        let period = BillingPeriod::new(label, account.spec.billing_day, account.timezone())?;
        if period.end > now {
            return Err(BillingError::PeriodNotEnded {
                period: label.to_string(),
                account: account.spec.account_id.clone(),
                end: period.end.to_rfc3339(),
            });
        }
        pending.insert(
            account.spec.account_id.clone(),
            Pending {
                account,
                period,
                grouper: ChargeGrouper::new(),
                finalized: Vec::new(),
                lines: 0,
                blocked: None,
            },
        );
    }
    let earliest = label.plus(-(settings.correction_periods as i64));
    let finalized: Vec<(String, String)> = sqlx::query_as(
        "SELECT account_id, period FROM invoices WHERE status = 'finalized' AND period < $1 AND period >= $2 \
         ORDER BY account_id, period",
    )
    .bind(label.to_string())
    .bind(earliest.to_string())
    .fetch_all(&db.pool)
    .await?;
    for (account_id, period) in finalized {
        if let Some(p) = pending.get_mut(&account_id) {
            let earlier = BillingPeriod::new(
                period.parse()?,
                p.account.spec.billing_day,
                p.account.timezone(),
            )?;
            p.finalized.push((earlier, ChargeGrouper::new()));
        }
    }
    let mut summary = RunSummary {
        period: label.to_string(),
        accounts: Vec::new(),
        lines_read: 0,
        unbilled_lines: 0,
    };
    let Some(from) = pending.values().map(|p| p.period.start).min() else {
        return Ok(summary);
    };
    let to = pending.values().map(|p| p.period.end).max().unwrap_or(from);
    check_rated(db, from, to).await?;
    let read_from = pending
        .values()
        .flat_map(|p| p.finalized.iter().map(|(e, _)| e.start))
        .fold(from, DateTime::min);

    let owners = Owners::load(db).await?;
    tally_rate::runs::read_current_lines(db, rated, read_from, to, |line| {
        let in_period = line.period_start >= from;
        summary.lines_read += u64::from(in_period);
        let Some(owner) = owners.owner_of(&line.project_id) else {
            summary.unbilled_lines += u64::from(in_period);
            return;
        };
        let Some(p) = pending.get_mut(owner) else {
            return;
        };
        if p.blocked.is_some() {
            return;
        }
        let currency = p.account.spec.currency;
        let Some(grouper) = p.grouper_for(line.period_start) else {
            return;
        };
        if let Some(e) = &line.error {
            p.blocked = Some(format!(
                "a line of project {} meter {} at {} could not be priced ({e}): fix the plan and re-rate",
                line.project_id,
                line.meter,
                line.period_start.to_rfc3339()
            ));
        } else if line.currency != currency.code() && line.amount != Decimal::ZERO {
            p.blocked = Some(format!(
                "project {} was priced in {} but the account is billed in {}: assign a plan in {} and re-rate",
                line.project_id,
                line.currency,
                currency.code(),
                currency.code()
            ));
        } else {
            grouper.add(&line);
            p.lines += 1;
        }
    })
    .await?;

    // Accounts in id order and in batches: two runs at once lock rows in
    // the same order (no deadlock), a month of many accounts does not pay
    // one commit per invoice, and only one batch of documents is held at a
    // time.
    let mut batch = Vec::with_capacity(DRAFT_BATCH);
    for (account_id, p) in pending {
        if let Some(message) = p.blocked {
            summary.accounts.push(RunOutcome {
                account_id,
                invoice_id: None,
                outcome: "blocked".into(),
                total: None,
                message: Some(message),
            });
            continue;
        }
        let mut charges = p.grouper.finish();
        let this = invoice_id(&account_id, label);
        for (earlier, grouper) in p.finalized {
            let invoiced = invoiced_for(db, &account_id, &earlier, &this).await?;
            charges.extend(corrections(grouper.finish(), invoiced));
        }
        batch.push(draft(settings, &p.account, &p.period, charges)?);
        if batch.len() == DRAFT_BATCH {
            write_batch(db, &mut batch, now, &mut summary).await?;
        }
    }
    write_batch(db, &mut batch, now, &mut summary).await?;
    summary
        .accounts
        .sort_by(|a, b| a.account_id.cmp(&b.account_id));
    Ok(summary)
}

/// Drafts written per transaction.
const DRAFT_BATCH: usize = 1000;

/// Writes and empties a batch of drafts in one transaction.
async fn write_batch(
    db: &Database,
    batch: &mut Vec<InvoiceDocument>,
    now: DateTime<Utc>,
    summary: &mut RunSummary,
) -> Result<(), BillingError> {
    if batch.is_empty() {
        return Ok(());
    }
    // SQLite compiles very long statements slowly; PostgreSQL pays per
    // round trip. Measured with the invoice benchmark (docs/benchmarks.md).
    let rows_per_statement = match db.backend {
        tally_db::Backend::Sqlite => 20,
        tally_db::Backend::Postgres => 1000,
    };
    let mut tx = db.begin_write().await?;
    let outcomes = write_drafts(&mut tx, db.backend, batch, now, rows_per_statement).await?;
    tx.commit().await?;
    for (doc, outcome) in batch.drain(..).zip(outcomes) {
        summary.accounts.push(RunOutcome {
            total: (outcome != "finalized").then_some(doc.total),
            account_id: doc.account_id,
            invoice_id: Some(doc.invoice_id),
            outcome: outcome.into(),
            message: None,
        });
    }
    Ok(())
}

/// Refuses a range that rating has not covered completely.
async fn check_rated(
    db: &Database,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), BillingError> {
    let mut at = from;
    for c in tally_rate::runs::coverage(db, from, to).await? {
        if c.from > at {
            break;
        }
        at = at.max(c.to);
    }
    if at < to {
        return Err(BillingError::NotRated {
            from: at.to_rfc3339(),
            to: to.to_rfc3339(),
        });
    }
    Ok(())
}

/// What was invoiced so far for an earlier, finalized period, per
/// (project, meter, plan): its own invoice's lines plus corrections of it
/// on other invoices (drafts included, so two open drafts never claim the
/// same late usage), except on the invoice being built.
async fn invoiced_for(
    db: &Database,
    account_id: &str,
    period: &BillingPeriod,
    building: &str,
) -> Result<BTreeMap<ChargeKey, Charge>, BillingError> {
    let rows: Vec<InvoicedLine> = sqlx::query_as(
        "SELECT l.project_id, l.meter, l.plan_id, l.unit, l.quantity, l.amount, l.service_start_us, l.service_end_us \
         FROM invoice_lines l JOIN invoices i ON i.invoice_id = l.invoice_id \
         WHERE i.account_id = $1 AND ((i.invoice_id = $2 AND l.correction = FALSE) \
         OR (l.correction = TRUE AND i.invoice_id <> $3 AND l.service_start_us >= $4 AND l.service_start_us < $5))",
    )
    .bind(account_id)
    .bind(invoice_id(account_id, period.label))
    .bind(building)
    .bind(period.start.timestamp_micros())
    .bind(period.end.timestamp_micros())
    .fetch_all(&db.pool)
    .await?;
    let mut out: BTreeMap<ChargeKey, Charge> = BTreeMap::new();
    for InvoicedLine {
        project_id,
        meter,
        plan_id,
        unit,
        quantity,
        amount,
        service_start_us: start,
        service_end_us: end,
    } in rows
    {
        let key = (project_id.clone(), meter.clone(), plan_id.clone());
        let c = out.entry(key).or_insert_with(|| Charge {
            project_id,
            meter,
            plan_id,
            quantity: Decimal::ZERO,
            unit,
            unit_price: None,
            amount: Decimal::ZERO,
            service_start: instant(start),
            service_end: instant(end),
            correction: true,
        });
        c.quantity += decimal("line quantity", &quantity)?;
        c.amount += decimal("line amount", &amount)?;
    }
    Ok(out)
}

type ChargeKey = (String, String, String);

#[derive(sqlx::FromRow)]
struct InvoicedLine {
    project_id: String,
    meter: String,
    plan_id: String,
    unit: String,
    quantity: String,
    amount: String,
    service_start_us: i64,
    service_end_us: i64,
}

#[derive(sqlx::FromRow)]
struct CreditNoteRow {
    credit_note_id: String,
    number: String,
    line_no: Option<i64>,
    net: String,
    tax: String,
    total: String,
    reason: String,
    issued_at_us: i64,
}

/// Correction charges: what a finalized period's lines say now minus what
/// was invoiced for it, per (project, meter, plan), carrying the original
/// service period. Nothing when they agree.
fn corrections(now: Vec<Charge>, mut invoiced: BTreeMap<ChargeKey, Charge>) -> Vec<Charge> {
    let mut out = Vec::new();
    for c in now {
        let key = (c.project_id.clone(), c.meter.clone(), c.plan_id.clone());
        let (q, a) = invoiced
            .remove(&key)
            .map(|i| (i.quantity, i.amount))
            .unwrap_or_default();
        if c.quantity != q || c.amount != a {
            out.push(Charge {
                quantity: c.quantity - q,
                amount: c.amount - a,
                unit_price: c.unit_price.filter(|_| c.quantity != q),
                correction: true,
                ..c
            });
        }
    }
    // Invoiced usage that re-rating removed is credited back.
    for (_, i) in invoiced {
        if !i.quantity.is_zero() || !i.amount.is_zero() {
            out.push(Charge {
                quantity: -i.quantity,
                amount: -i.amount,
                ..i
            });
        }
    }
    out
}

fn draft(
    settings: &InvoiceSettings,
    account: &Account,
    period: &BillingPeriod,
    charges: Vec<Charge>,
) -> Result<InvoiceDocument, BillingError> {
    let input = InvoiceInput {
        currency: account.spec.currency,
        charges,
        discounts: account
            .coupons
            .iter()
            .filter(|c| c.applies_to(period.label))
            .map(|c| (c.code.clone(), c.discount.clone()))
            .collect(),
        minimum_commitment: account.spec.minimum_commitment,
        taxes: account.spec.taxes.clone(),
    };
    let computed = compute_invoice(&input)?;
    let doc = InvoiceDocument::from_computed(
        invoice_id(&account.spec.account_id, period.label),
        account.spec.account_id.clone(),
        settings.seller.clone(),
        account.buyer(),
        period,
        &computed,
    );
    doc.check()
        .map_err(tally_core::invoice::InvoiceError::Invariant)?;
    Ok(doc)
}

const INVOICE_COLUMNS: usize = 15;
const LINE_COLUMNS: usize = 13;

/// Writes a batch of drafts, each unless its invoice is finalized; returns
/// what happened to each (`created`, `regenerated`, `finalized`). New
/// invoices and all lines go in multi-row statements: a fresh run of many
/// accounts costs a few statements per batch, not a few per invoice.
async fn write_drafts(
    conn: &mut sqlx::AnyConnection,
    backend: tally_db::Backend,
    docs: &[InvoiceDocument],
    now: DateTime<Utc>,
    rows_per_statement: usize,
) -> Result<Vec<&'static str>, BillingError> {
    let documents: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string(d).expect("documents serialize"))
        .collect();
    let figures = |d: &InvoiceDocument| {
        [
            d.subtotal.to_string(),
            d.discount_total().to_string(),
            d.commitment_top_up.to_string(),
            d.taxable.to_string(),
            d.tax_total().to_string(),
            d.total.to_string(),
        ]
    };
    let mut created = std::collections::HashSet::new();
    for (docs, documents) in docs
        .chunks(rows_per_statement)
        .zip(documents.chunks(rows_per_statement))
    {
        let sql = format!(
            "INSERT INTO invoices (invoice_id, account_id, period, period_start_us, period_end_us, status, \
             currency, subtotal, discount_total, commitment_top_up, taxable, tax_total, total, document, \
             generated_at_us) VALUES {} ON CONFLICT (account_id, period) DO NOTHING RETURNING invoice_id",
            tally_db::values_placeholders(backend, docs.len(), INVOICE_COLUMNS)
        );
        // Only placeholders are generated into this text.
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for (d, document) in docs.iter().zip(documents) {
            q = q
                .bind(&d.invoice_id)
                .bind(&d.account_id)
                .bind(&d.period)
                .bind(d.period_start.timestamp_micros())
                .bind(d.period_end.timestamp_micros())
                .bind("draft")
                .bind(d.currency.code());
            for f in figures(d) {
                q = q.bind(f);
            }
            q = q.bind(document).bind(now.timestamp_micros());
        }
        created.extend(q.fetch_all(&mut *conn).await?);
    }
    let mut outcomes = Vec::with_capacity(docs.len());
    let mut with_lines = Vec::with_capacity(docs.len());
    for (d, document) in docs.iter().zip(&documents) {
        if created.contains(&d.invoice_id) {
            outcomes.push("created");
            with_lines.push(d);
            continue;
        }
        let [subtotal, discounts, top_up, taxable, tax, total] = figures(d);
        let updated = sqlx::query(
            "UPDATE invoices SET subtotal = $1, discount_total = $2, commitment_top_up = $3, taxable = $4, \
             tax_total = $5, total = $6, document = $7, revision = revision + 1, generated_at_us = $8 \
             WHERE invoice_id = $9 AND status = 'draft'",
        )
        .bind(subtotal)
        .bind(discounts)
        .bind(top_up)
        .bind(taxable)
        .bind(tax)
        .bind(total)
        .bind(document)
        .bind(now.timestamp_micros())
        .bind(&d.invoice_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if updated == 0 {
            outcomes.push("finalized");
            continue;
        }
        sqlx::query("DELETE FROM invoice_lines WHERE invoice_id = $1")
            .bind(&d.invoice_id)
            .execute(&mut *conn)
            .await?;
        outcomes.push("regenerated");
        with_lines.push(d);
    }
    let lines: Vec<(&InvoiceDocument, &DocumentLine)> = with_lines
        .iter()
        .flat_map(|d| d.lines.iter().map(move |l| (*d, l)))
        .collect();
    for chunk in lines.chunks(rows_per_statement) {
        let sql = format!(
            "INSERT INTO invoice_lines (invoice_id, line_no, project_id, meter, unit, plan_id, \
             service_start_us, service_end_us, quantity, unit_price, amount, rounded_amount, correction) VALUES {}",
            tally_db::values_placeholders(backend, chunk.len(), LINE_COLUMNS)
        );
        // Only placeholders are generated into this text.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (d, l) in chunk {
            q = q
                .bind(&d.invoice_id)
                .bind(l.line_no as i64)
                .bind(&l.project_id)
                .bind(&l.meter)
                .bind(&l.unit)
                .bind(&l.plan_id)
                .bind(l.service_start.timestamp_micros())
                .bind(l.service_end.timestamp_micros())
                .bind(l.quantity.to_string())
                .bind(l.unit_price.map(|p| p.to_string()))
                .bind(l.exact_amount.to_string())
                .bind(l.amount.to_string())
                .bind(l.correction);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(outcomes)
}

/// An invoice as stored, with its settlement and credit notes.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredInvoice {
    /// The document (status includes settlement: `paid`, `void`).
    #[serde(flatten)]
    pub document: InvoiceDocument,
    /// How many times the draft was generated.
    pub revision: i64,
    /// Σ credit notes (tax included).
    pub credited: Decimal,
    /// Credit notes issued against it.
    pub credit_notes: Vec<CreditNote>,
}

/// A credit note as issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditNote {
    /// Its id.
    pub credit_note_id: String,
    /// Its gapless number.
    pub number: String,
    /// The invoice it credits.
    pub invoice_id: String,
    /// The line it credits, when per line.
    pub line_no: Option<u32>,
    /// Revenue part.
    pub net: Decimal,
    /// Tax part.
    pub tax: Decimal,
    /// net + tax.
    pub total: Decimal,
    /// Why.
    pub reason: String,
    /// When.
    pub issued_at: DateTime<Utc>,
}

/// Filters of an invoice listing.
#[derive(Debug, Clone, Default)]
pub struct InvoiceFilter {
    /// Only this account.
    pub account_id: Option<String>,
    /// Only this period.
    pub period: Option<PeriodLabel>,
    /// Only this status (`draft`, `finalized`, `paid`, `void`).
    pub status: Option<String>,
    /// Only invoices with a credit note issued in `[from, to)`.
    pub credited_between: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// The conditions of an invoice listing, over `invoices i` left-joined
/// with `invoice_settlements s`: the caller's scope, then the filters.
/// Bound by [`bind_listing`], in this order.
const LISTING_CONDITIONS: &str = "($1 OR i.account_id = $2) \
     AND ($3 IS NULL OR i.account_id = $3) AND ($4 IS NULL OR i.period = $4) \
     AND ($5 IS NULL OR COALESCE(s.status, i.status) = $5) \
     AND ($6 OR EXISTS (SELECT 1 FROM credit_notes c WHERE c.invoice_id = i.invoice_id \
     AND c.issued_at_us >= $7 AND c.issued_at_us < $8))";

fn bind_listing<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments>,
    scope: &AccountScope,
    filter: &InvoiceFilter,
) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments> {
    let (all, one) = scope.binds();
    let (from_us, to_us) = filter.credited_between.map_or((0, 0), |(f, t)| {
        (f.timestamp_micros(), t.timestamp_micros())
    });
    query
        .bind(all)
        .bind(one)
        .bind(filter.account_id.clone())
        .bind(filter.period.map(|p| p.to_string()))
        .bind(filter.status.clone())
        .bind(filter.credited_between.is_none())
        .bind(from_us)
        .bind(to_us)
}

/// An invoice row: its document as stored, its revision and its
/// settlement (`paid`, `void`), which is the status shown when present.
#[derive(sqlx::FromRow)]
struct InvoiceRow {
    invoice_id: String,
    document: String,
    revision: i64,
    settled: Option<String>,
}

impl InvoiceRow {
    fn into_stored(self, credit_notes: Vec<CreditNote>) -> Result<StoredInvoice, BillingError> {
        let mut document: InvoiceDocument = serde_json::from_str(&self.document).map_err(|e| {
            BillingError::Invalid(format!(
                "stored invoice {} does not parse: {e}",
                self.invoice_id
            ))
        })?;
        if let Some(settled) = self.settled {
            document.status = settled;
        }
        Ok(StoredInvoice {
            revision: self.revision,
            credited: credit_notes.iter().map(|c| c.total).sum(),
            credit_notes,
            document,
        })
    }
}

/// Invoices the caller may see, newest period first: one query for the
/// invoices (scope and filters in SQL, the settled status included) and
/// one for the credit notes of those invoices, whatever their number.
pub async fn list_invoices(
    db: &Database,
    scope: &AccountScope,
    filter: &InvoiceFilter,
) -> Result<Vec<StoredInvoice>, BillingError> {
    let mut conn = db.pool.acquire().await?;
    // Only the constant conditions are pasted into these texts; every
    // value is bound.
    let rows: Vec<InvoiceRow> = bind_listing(
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT i.invoice_id, i.document, i.revision, s.status AS settled FROM invoices i \
             LEFT JOIN invoice_settlements s ON s.invoice_id = i.invoice_id \
             WHERE {LISTING_CONDITIONS} ORDER BY i.period DESC, i.account_id"
        ))),
        scope,
        filter,
    )
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let notes: Vec<CreditNoteWithInvoice> = bind_listing(
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT c.invoice_id, c.credit_note_id, c.number, c.line_no, c.net, c.tax, c.total, \
             c.reason, c.issued_at_us FROM credit_notes c \
             JOIN invoices i ON i.invoice_id = c.invoice_id \
             LEFT JOIN invoice_settlements s ON s.invoice_id = i.invoice_id \
             WHERE {LISTING_CONDITIONS} ORDER BY c.number"
        ))),
        scope,
        filter,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut notes_of: std::collections::HashMap<String, Vec<CreditNote>> = Default::default();
    for n in notes {
        let note = credit_note(&n.invoice_id, n.note)?;
        notes_of.entry(n.invoice_id).or_default().push(note);
    }
    rows.into_iter()
        .map(|row| {
            let notes = notes_of.remove(&row.invoice_id).unwrap_or_default();
            row.into_stored(notes)
        })
        .collect()
}

/// One invoice the caller may see.
pub async fn get_invoice(
    db: &Database,
    scope: &AccountScope,
    invoice_id: &str,
) -> Result<StoredInvoice, BillingError> {
    let mut conn = db.pool.acquire().await?;
    read_invoice(&mut conn, scope, invoice_id).await
}

async fn read_invoice(
    conn: &mut sqlx::AnyConnection,
    scope: &AccountScope,
    invoice_id: &str,
) -> Result<StoredInvoice, BillingError> {
    let (all, one) = scope.binds();
    let row: InvoiceRow = sqlx::query_as(
        "SELECT i.invoice_id, i.document, i.revision, s.status AS settled FROM invoices i \
         LEFT JOIN invoice_settlements s ON s.invoice_id = i.invoice_id \
         WHERE i.invoice_id = $1 AND ($2 OR i.account_id = $3)",
    )
    .bind(invoice_id)
    .bind(all)
    .bind(one)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| BillingError::UnknownInvoice(invoice_id.to_string()))?;
    let credit_notes = credit_notes(conn, invoice_id).await?;
    row.into_stored(credit_notes)
}

async fn credit_notes(
    conn: &mut sqlx::AnyConnection,
    invoice_id: &str,
) -> Result<Vec<CreditNote>, BillingError> {
    let rows: Vec<CreditNoteRow> = sqlx::query_as(
        "SELECT credit_note_id, number, line_no, net, tax, total, reason, issued_at_us \
         FROM credit_notes WHERE invoice_id = $1 ORDER BY number",
    )
    .bind(invoice_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| credit_note(invoice_id, r))
        .collect()
}

fn credit_note(invoice_id: &str, r: CreditNoteRow) -> Result<CreditNote, BillingError> {
    Ok(CreditNote {
        credit_note_id: r.credit_note_id,
        number: r.number,
        invoice_id: invoice_id.to_string(),
        line_no: r.line_no.map(|n| n as u32),
        net: decimal("credit net", &r.net)?,
        tax: decimal("credit tax", &r.tax)?,
        total: decimal("credit total", &r.total)?,
        reason: r.reason,
        issued_at: instant(r.issued_at_us),
    })
}

/// A credit note row with its invoice, for listing many invoices' notes.
#[derive(sqlx::FromRow)]
struct CreditNoteWithInvoice {
    invoice_id: String,
    #[sqlx(flatten)]
    note: CreditNoteRow,
}

/// Takes the next number of a series inside the caller's transaction: a
/// rolled-back issue gives the number back, so numbers have no gaps.
async fn next_number(conn: &mut sqlx::AnyConnection, series: &str) -> Result<String, BillingError> {
    sqlx::query("INSERT INTO number_series (series, next_number) VALUES ($1, 1) ON CONFLICT (series) DO NOTHING")
        .bind(series)
        .execute(&mut *conn)
        .await?;
    let next: i64 = sqlx::query_scalar(
        "UPDATE number_series SET next_number = next_number + 1 WHERE series = $1 RETURNING next_number",
    )
    .bind(series)
    .fetch_one(&mut *conn)
    .await?;
    Ok(format!("{series}-{:06}", next - 1))
}

/// Begins a write transaction holding the invoice's row lock, so that
/// concurrent finalizations, payments, voids and credit notes of one
/// invoice run one after the other and each sees the previous one's
/// outcome. SQLite's `BEGIN IMMEDIATE` already serializes every writer;
/// PostgreSQL locks the row (`FOR UPDATE` fires no trigger).
async fn begin_on_invoice(
    db: &Database,
    invoice_id: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, BillingError> {
    let mut tx = db.begin_write().await?;
    if db.backend == tally_db::Backend::Postgres {
        sqlx::query("SELECT invoice_id FROM invoices WHERE invoice_id = $1 FOR UPDATE")
            .bind(invoice_id)
            .fetch_optional(&mut *tx)
            .await?;
    }
    Ok(tx)
}

fn wrong_status(doc: &InvoiceDocument, advice: &str) -> BillingError {
    BillingError::WrongStatus {
        invoice: doc.invoice_id.clone(),
        status: doc.status.clone(),
        advice: advice.to_string(),
    }
}

/// Finalizes a draft: gives it the next number of its account's series,
/// sets issue and due dates, freezes it and posts it to the ledger. A
/// prepaid account's balance pays what it can at once.
pub async fn finalize(
    db: &Database,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<StoredInvoice, BillingError> {
    let mut tx = begin_on_invoice(db, invoice_id).await?;
    let stored = read_invoice(&mut tx, &AccountScope::All, invoice_id).await?;
    let mut doc = stored.document;
    if doc.status != "draft" {
        return Err(wrong_status(&doc, "only a draft can be finalized"));
    }
    let account = crate::accounts::get_account(db, &AccountScope::All, &doc.account_id).await?;
    doc.number = Some(next_number(&mut tx, &account.spec.series).await?);
    doc.status = "finalized".into();
    doc.issued_at = Some(now);
    doc.due_at = Some(now + Duration::days(account.spec.payment_terms_days as i64));
    let number = doc.number.clone().unwrap_or_default();
    let frozen = sqlx::query(
        "UPDATE invoices SET status = 'finalized', number = $1, issued_at_us = $2, due_at_us = $3, document = $4 \
         WHERE invoice_id = $5 AND status = 'draft'",
    )
    .bind(&number)
    .bind(now.timestamp_micros())
    .bind(doc.due_at.map(|d| d.timestamp_micros()))
    .bind(serde_json::to_string(&doc).expect("documents serialize"))
    .bind(invoice_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if frozen != 1 {
        // Unreachable while the row lock is held; never post twice.
        return Err(wrong_status(
            &doc,
            "it changed while being finalized; try again",
        ));
    }
    let tax = doc.tax_total();
    if !doc.total.is_zero() {
        let txn = LedgerTransaction::invoice_finalized(
            &doc.account_id,
            &number,
            doc.total - tax,
            tax,
            doc.currency,
        )?;
        ledger::post(&mut tx, &txn, Some(&doc.account_id), Some(invoice_id), now).await?;
    }
    // The series row taken above is held until commit, so two
    // finalizations of one account never spend the same prepaid funds.
    if account.spec.payment_mode == PaymentMode::Prepaid {
        // Usage drawn while the period was rated is given back first; the
        // invoice total (with tax, coupons, commitment) is what is owed.
        let drawn = crate::prepaid::drawn_for(&mut tx, &doc.account_id, invoice_id).await?;
        if !drawn.is_zero() {
            let txn = crate::prepaid::draw_transaction(
                &account,
                format!("usage drawn for {} settled by invoice {number}", doc.period),
                -drawn,
            )?;
            ledger::post(&mut tx, &txn, Some(&doc.account_id), Some(invoice_id), now).await?;
        }
    }
    if account.spec.payment_mode == PaymentMode::Prepaid && doc.total > Decimal::ZERO {
        let funds = -ledger::balance(&mut tx, &format!("prepaid:{}", doc.account_id))
            .await?
            .get(doc.currency.code())
            .copied()
            .unwrap_or_default();
        let draw = funds.min(doc.total);
        if draw > Decimal::ZERO {
            let txn = LedgerTransaction::drawdown(
                &doc.account_id,
                format!("invoice {number} paid from the prepaid balance"),
                draw,
                doc.currency,
            )?;
            ledger::post(&mut tx, &txn, Some(&doc.account_id), Some(invoice_id), now).await?;
        }
        if draw == doc.total {
            settle(&mut tx, invoice_id, "paid", "prepaid balance", now).await?;
        }
    }
    tx.commit().await?;
    crate::alerts::check_low_balance(db, &account, now).await?;
    get_invoice(db, &AccountScope::All, invoice_id).await
}

async fn settle(
    conn: &mut sqlx::AnyConnection,
    invoice_id: &str,
    status: &str,
    reference: &str,
    now: DateTime<Utc>,
) -> Result<(), BillingError> {
    sqlx::query(
        "INSERT INTO invoice_settlements (invoice_id, status, reference, settled_at_us) VALUES ($1, $2, $3, $4)",
    )
    .bind(invoice_id)
    .bind(status)
    .bind(reference)
    .bind(now.timestamp_micros())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Finalizes every draft of a period, in account order; returns those
/// this call finalized.
pub async fn finalize_period(
    db: &Database,
    label: PeriodLabel,
    now: DateTime<Utc>,
) -> Result<Vec<StoredInvoice>, BillingError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT invoice_id FROM invoices WHERE period = $1 AND status = 'draft' ORDER BY account_id",
    )
    .bind(label.to_string())
    .fetch_all(&db.pool)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match finalize(db, &id, now).await {
            Ok(i) => out.push(i),
            // Another process finalized it since the listing: it has its
            // number already, and finalizing is not to be done twice.
            Err(BillingError::WrongStatus { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Records full payment of a finalized invoice (what remains after credit
/// notes).
pub async fn pay(
    db: &Database,
    invoice_id: &str,
    reference: &str,
    now: DateTime<Utc>,
) -> Result<StoredInvoice, BillingError> {
    let mut tx = begin_on_invoice(db, invoice_id).await?;
    let stored = read_invoice(&mut tx, &AccountScope::All, invoice_id).await?;
    let doc = &stored.document;
    if doc.status != "finalized" {
        return Err(wrong_status(
            doc,
            "only a finalized, unsettled invoice can be paid",
        ));
    }
    let due = doc.total - stored.credited;
    if due > Decimal::ZERO {
        let txn = LedgerTransaction::payment(
            &doc.account_id,
            doc.number.as_deref().unwrap_or(invoice_id),
            due,
            doc.currency,
        )?;
        ledger::post(&mut tx, &txn, Some(&doc.account_id), Some(invoice_id), now).await?;
    }
    settle(&mut tx, invoice_id, "paid", reference, now).await?;
    tx.commit().await?;
    get_invoice(db, &AccountScope::All, invoice_id).await
}

/// Voids a finalized invoice: what remains of it (after credit notes) is
/// reversed in the ledger; its number stays used.
pub async fn void(
    db: &Database,
    invoice_id: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<StoredInvoice, BillingError> {
    if reason.trim().is_empty() {
        return Err(BillingError::Invalid(
            "voiding an invoice needs a reason".into(),
        ));
    }
    let mut tx = begin_on_invoice(db, invoice_id).await?;
    let stored = read_invoice(&mut tx, &AccountScope::All, invoice_id).await?;
    let doc = &stored.document;
    if doc.status != "finalized" {
        return Err(wrong_status(
            doc,
            "only a finalized, unpaid invoice can be voided; issue a credit note instead",
        ));
    }
    let remaining = doc.total - stored.credited;
    if remaining > Decimal::ZERO {
        let credited_tax: Decimal = stored.credit_notes.iter().map(|c| c.tax).sum();
        let tax = doc.tax_total() - credited_tax;
        let txn = LedgerTransaction::reversal(
            TransactionKind::CreditNote,
            format!("receivable:{}", doc.account_id),
            format!(
                "void of invoice {}: {reason}",
                doc.number.as_deref().unwrap_or(invoice_id)
            ),
            remaining - tax,
            tax,
            doc.currency,
        )?;
        ledger::post(&mut tx, &txn, Some(&doc.account_id), Some(invoice_id), now).await?;
    }
    settle(&mut tx, invoice_id, "void", reason, now).await?;
    tx.commit().await?;
    get_invoice(db, &AccountScope::All, invoice_id).await
}

/// What a credit note is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditRequest {
    /// The finalized invoice.
    pub invoice_id: String,
    /// One line of it (else the invoice as a whole).
    pub line_no: Option<u32>,
    /// Amount, tax included; default: all that remains (of the line, or
    /// of the invoice).
    pub amount: Option<Decimal>,
    /// Why (printed on the note).
    pub reason: String,
}

/// Issues a credit note against a finalized (or paid) invoice, never for
/// more than what remains of it; a line's share is its part of the
/// invoice total (after discounts, with tax).
pub async fn credit(
    db: &Database,
    settings: &InvoiceSettings,
    request: &CreditRequest,
    now: DateTime<Utc>,
) -> Result<CreditNote, BillingError> {
    if request.reason.trim().is_empty() {
        return Err(BillingError::Invalid("a credit note needs a reason".into()));
    }
    let mut tx = begin_on_invoice(db, &request.invoice_id).await?;
    let stored = read_invoice(&mut tx, &AccountScope::All, &request.invoice_id).await?;
    let doc = &stored.document;
    if doc.status != "finalized" && doc.status != "paid" {
        return Err(wrong_status(
            doc,
            "credit notes apply to finalized or paid invoices",
        ));
    }
    let remaining = doc.total - stored.credited;
    let round = |d: Decimal| Money::new(d, doc.currency).round_to_minor_unit().amount;
    let limit = match request.line_no {
        None => remaining,
        Some(n) => {
            let line = doc.lines.iter().find(|l| l.line_no == n).ok_or_else(|| {
                BillingError::Invalid(format!(
                    "invoice {} has no line {n} (it has {} lines)",
                    doc.invoice_id,
                    doc.lines.len()
                ))
            })?;
            let share = if doc.subtotal.is_zero() {
                Decimal::ZERO
            } else {
                round(line.amount * doc.total / doc.subtotal)
            };
            let on_line: Decimal = stored
                .credit_notes
                .iter()
                .filter(|c| c.line_no == Some(n))
                .map(|c| c.total)
                .sum();
            (share - on_line).min(remaining)
        }
    };
    let amount = request.amount.unwrap_or(limit);
    if round(amount) != amount {
        return Err(BillingError::Invalid(format!(
            "a credit of {amount} {} has more decimals than the currency's {}",
            doc.currency.code(),
            doc.currency.minor_unit_digits()
        )));
    }
    check_credit(doc.total, doc.total - limit, amount).map_err(|e| {
        BillingError::CreditTooLarge(match request.line_no {
            Some(n) => format!("{e} (line {n} can take {limit})"),
            None => e,
        })
    })?;
    let split = split_credit(amount, doc.total, doc.tax_total(), doc.currency);
    let series = if settings.credit_note_series.is_empty() {
        "CN"
    } else {
        &settings.credit_note_series
    };
    let number = next_number(&mut tx, series).await?;
    let id = format!("cn_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(
        "INSERT INTO credit_notes (credit_note_id, number, invoice_id, line_no, net, tax, total, reason, issued_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(&number)
    .bind(&doc.invoice_id)
    .bind(request.line_no.map(|n| n as i64))
    .bind(split.net.to_string())
    .bind(split.tax.to_string())
    .bind(amount.to_string())
    .bind(&request.reason)
    .bind(now.timestamp_micros())
    .execute(&mut *tx)
    .await?;
    // Money already paid goes back to the customer's prepaid balance;
    // money still owed is taken off what they owe.
    let customer = if doc.status == "paid" {
        format!("prepaid:{}", doc.account_id)
    } else {
        format!("receivable:{}", doc.account_id)
    };
    let txn = LedgerTransaction::reversal(
        TransactionKind::CreditNote,
        customer,
        format!("credit note {number}: {}", request.reason),
        split.net,
        split.tax,
        doc.currency,
    )?;
    ledger::post(&mut tx, &txn, Some(&doc.account_id), Some(&id), now).await?;
    tx.commit().await?;
    Ok(CreditNote {
        credit_note_id: id,
        number,
        invoice_id: doc.invoice_id.clone(),
        line_no: request.line_no,
        net: split.net,
        tax: split.tax,
        total: amount,
        reason: request.reason.clone(),
        issued_at: now,
    })
}

/// Deletes a draft (a later run may create it again). Finalized invoices
/// are refused here and, whatever the caller, by the database.
pub async fn delete_draft(db: &Database, invoice_id: &str) -> Result<(), BillingError> {
    let mut tx = begin_on_invoice(db, invoice_id).await?;
    let stored = read_invoice(&mut tx, &AccountScope::All, invoice_id).await?;
    if stored.document.status != "draft" {
        return Err(wrong_status(
            &stored.document,
            "a finalized invoice is never deleted; void it or issue a credit note",
        ));
    }
    sqlx::query("DELETE FROM invoice_lines WHERE invoice_id = $1")
        .bind(invoice_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM invoices WHERE invoice_id = $1")
        .bind(invoice_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
