//! Why a rated line (or an invoice line) costs what it does: the rating
//! run that produced it, the meter definition that measured it, the plan
//! version and rule that priced it, and the raw records behind it down to
//! the original notification payloads.
//!
//! A rated line is named by its coordinates: project, resource, meter and
//! the start of its rating period (lines of one resource and hour that
//! differ by group values, such as two flavors around a resize, are all
//! returned). The caller's scope is checked on the line's project before
//! anything is read.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tally_core::billing::DocumentLine;
use tally_core::{Identity, PriceRule, RatedLine, Role, UsageRecord};
use tally_db::Database;
use tally_rate::meters::MeterSummary;
use tally_rate::runs::RatingRun;
use tally_store::objects::RawObjects;
use tally_store::{EventFilter, RawStore};

use crate::ShowError;

/// Most raw records returned with an explanation.
pub const MAX_RECORDS: usize = 200;

/// Which rated line to explain.
#[derive(Debug, Clone)]
pub struct LineRef {
    /// The project.
    pub project_id: String,
    /// The resource.
    pub resource_id: String,
    /// The rated meter.
    pub meter: String,
    /// Any instant inside the line's rating period. When no line of the
    /// resource contains it, the resource's next line in the same rating
    /// run is explained (so a link can name a day, not the exact hour a
    /// resource appeared).
    pub at: DateTime<Utc>,
}

/// The plan rule that priced a line.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PricedBy {
    /// The plan.
    pub plan_id: String,
    /// Its version in force at the period's start.
    pub version: u32,
    /// When that version took effect.
    pub effective_from: Option<DateTime<Utc>>,
    /// The rule's label as on the line (`rules[2]`, `cloudkitty:instance`).
    pub rule: String,
    /// Attribute values the rule matches, for plain rules.
    pub matches: Option<std::collections::BTreeMap<String, String>>,
    /// Projects the rule is limited to, for plain rules (empty: all).
    pub projects: Option<Vec<String>>,
    /// The rule's charge, allowance and minimum, for plain rules.
    pub price: Option<PriceRule>,
}

/// Everything behind one rated line.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Explanation {
    /// The current lines at those coordinates (one per group values).
    pub lines: Vec<RatedLine>,
    /// The run whose lines are current there.
    pub run: Option<RatingRun>,
    /// The meter definition that measured them.
    pub meter: Option<MeterSummary>,
    /// What priced them.
    pub priced_by: Vec<PricedBy>,
    /// Raw records of the resource's raw meter that the run read up to the
    /// line's end (from its range's start, less the carry lookback, since
    /// gauges and states carry forward): the latest [`MAX_RECORDS`].
    #[serde(skip)]
    pub records: Vec<UsageRecord>,
    /// More records existed than [`MAX_RECORDS`].
    pub records_truncated: bool,
}

/// Whether the caller may see `project_id` (account readers: projects
/// their account owns, directly or through a domain).
pub async fn may_read_project(
    db: &Database,
    identity: &Identity,
    project_id: &str,
) -> Result<bool, ShowError> {
    Ok(match &identity.role {
        Role::Admin => true,
        Role::ProjectReader { project_id: p } => p == project_id,
        Role::AccountReader { account_id } => {
            // One project's question: ask the database, in the SQL the
            // summaries scope by, rather than load every owner.
            let sql = format!(
                "SELECT count(*) FROM ({}) owned WHERE keystone_id = $2",
                crate::summary::account_projects(1)
            );
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(account_id)
                .bind(project_id)
                .fetch_one(&db.pool)
                .await?;
            n > 0
        }
    })
}

/// Explains the current line(s) at `line`. `Ok(None)` when there is none
/// the caller may see (the same answer whether it exists or not).
pub async fn explain_line(
    db: &Database,
    rated: &RawObjects,
    store: &RawStore,
    identity: &Identity,
    line: &LineRef,
    carry_lookback: Duration,
) -> Result<Option<Explanation>, ShowError> {
    if !may_read_project(db, identity, &line.project_id).await? {
        return Ok(None);
    }
    // The run covering the instant, then its lines at the coordinates.
    let covering = tally_rate::runs::coverage(db, line.at, line.at + Duration::microseconds(1))
        .await?
        .into_iter()
        .next();
    let Some(cov) = covering else {
        return Ok(None);
    };
    let mut lines = Vec::new();
    // The resource's first lines after `at`, for when none contains it.
    let mut next: Vec<RatedLine> = Vec::new();
    for file in &cov.files {
        tally_rate::runs::read_line_file(rated, file, |l| {
            if l.project_id != line.project_id
                || l.resource_id != line.resource_id
                || l.meter != line.meter
            {
                return;
            }
            if l.period_start <= line.at && line.at < l.period_end {
                lines.push(l);
            } else if l.period_start > line.at && lines.is_empty() {
                match next.first().map(|n| n.period_start) {
                    Some(s) if s < l.period_start => {}
                    Some(s) if s == l.period_start => next.push(l),
                    _ => next = vec![l],
                }
            }
        })
        .await?;
    }
    if lines.is_empty() {
        lines = next;
    }
    if lines.is_empty() {
        return Ok(None);
    }
    let run = tally_rate::runs::get_run(db, &cov.run_id).await?;
    let meters = tally_rate::plans::current_meters(db).await?;
    let meter = meters
        .summaries()
        .into_iter()
        .find(|m| m.name == line.meter);

    let priced_by = priced_by(db, &lines).await?;

    // Raw records: the meter's raw meter for this resource, from where the
    // run started reading (its range less the carry lookback) to the end
    // of the line: a gauge's value may come from any of them.
    let start = run
        .as_ref()
        .map_or_else(|| lines[0].period_start, |r| r.from);
    let end = lines.iter().map(|l| l.period_end).max().unwrap_or(line.at);
    let raw_meter = meters.get(&line.meter).map(|m| m.records.meter.clone());
    let filter = EventFilter {
        project_id: Some(line.project_id.clone()),
        resource_id: Some(line.resource_id.clone()),
        meter: raw_meter.or_else(|| Some(line.meter.clone())),
        from: Some(start - carry_lookback),
        to: Some(end),
    };
    // The scope was checked above on the line's project; the store's own
    // scoping knows no accounts, so it is asked as the operator.
    let operator = Identity {
        principal: identity.principal.clone(),
        role: Role::Admin,
    };
    let mut records: std::collections::VecDeque<UsageRecord> = Default::default();
    let mut records_truncated = false;
    let mut cursor = None;
    loop {
        let page = store
            .query(&operator, &filter, cursor.as_ref(), 1000)
            .await
            .map_err(|e| ShowError::Invalid(format!("reading raw records: {e}")))?;
        for r in page.records {
            if records.len() == MAX_RECORDS {
                records.pop_front();
                records_truncated = true;
            }
            records.push_back(r);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let records: Vec<UsageRecord> = records.into();
    Ok(Some(Explanation {
        lines,
        run,
        meter,
        priced_by,
        records,
        records_truncated,
    }))
}

/// The plan versions and rules that priced `lines`, each once.
async fn priced_by(db: &Database, lines: &[RatedLine]) -> Result<Vec<PricedBy>, ShowError> {
    let mut priced_by = Vec::new();
    for l in lines {
        if l.plan_id.is_empty()
            || priced_by
                .iter()
                .any(|p: &PricedBy| p.plan_id == l.plan_id && p.rule == l.rule)
        {
            continue;
        }
        let plan = tally_rate::plans::plan(db, &l.plan_id).await.ok();
        let version = plan
            .as_ref()
            .and_then(|p| p.versions.iter().find(|v| v.number == l.plan_version));
        let rule = version.and_then(|v| {
            l.rule
                .strip_prefix("rules[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| v.rules.iter().find(|r| r.index == i))
        });
        priced_by.push(PricedBy {
            plan_id: l.plan_id.clone(),
            version: l.plan_version,
            effective_from: version.map(|v| v.effective_from),
            rule: l.rule.clone(),
            matches: rule.map(|r| r.matches.clone()),
            projects: rule.map(|r| r.projects.clone()),
            price: rule.map(|r| r.rule.clone()),
        });
    }
    Ok(priced_by)
}

/// One resource's part of an invoice line: the current rated lines of that
/// resource in the line's service period.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResourceShare {
    /// The resource.
    pub resource_id: String,
    /// Σ quantity of its rated lines.
    pub quantity: Decimal,
    /// Σ amount of its rated lines, full precision.
    pub amount: Decimal,
    /// How many rated lines.
    pub lines: usize,
    /// Start of its first rated period: with the resource, the coordinates
    /// of a rated line to explain further.
    pub first_period_start: DateTime<Utc>,
}

/// Everything behind one invoice line.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvoiceLineExplanation {
    /// The invoice.
    pub invoice_id: String,
    /// Its status (a draft can still change).
    pub invoice_status: String,
    /// The invoice's currency.
    pub currency: String,
    /// The line as printed.
    pub line: DocumentLine,
    /// The resources behind it, largest amount first.
    pub resources: Vec<ResourceShare>,
    /// Σ of the current rated lines behind the line, full precision.
    pub current_amount: Decimal,
    /// Whether the rated lines changed since the line was computed (a
    /// re-rating or late usage): the difference goes on a later invoice as
    /// a correction line, never into this one once it is finalized.
    pub changed_since_invoiced: bool,
    /// What priced the rated lines.
    pub priced_by: Vec<PricedBy>,
}

/// Explains line `line_no` of invoice `invoice_id`: the resources and
/// rated lines behind it and the plan rules that priced them. `Ok(None)`
/// when the caller may not see the invoice or it has no such line (the
/// same answer either way).
///
/// A correction line is the difference between what its service period's
/// rated lines say now and what was invoiced for it before; its resources
/// are those of the period's current lines.
pub async fn explain_invoice_line(
    db: &Database,
    rated: &RawObjects,
    identity: &Identity,
    invoice_id: &str,
    line_no: u32,
) -> Result<Option<InvoiceLineExplanation>, ShowError> {
    let invoice = match tally_bill::invoices::get_invoice(
        db,
        &tally_bill::AccountScope::of(identity),
        invoice_id,
    )
    .await
    {
        Ok(i) => i,
        Err(tally_bill::BillingError::UnknownInvoice(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let doc = invoice.document;
    let Some(line) = doc.lines.iter().find(|l| l.line_no == line_no).cloned() else {
        return Ok(None);
    };
    let mut behind = Vec::new();
    tally_rate::runs::read_current_lines(db, rated, line.service_start, line.service_end, |l| {
        if l.error.is_none()
            && l.project_id == line.project_id
            && l.meter == line.meter
            && l.plan_id == line.plan_id
        {
            behind.push(l);
        }
    })
    .await?;
    let mut by_resource: std::collections::BTreeMap<&str, ResourceShare> = Default::default();
    for l in &behind {
        let share = by_resource
            .entry(&l.resource_id)
            .or_insert_with(|| ResourceShare {
                resource_id: l.resource_id.clone(),
                quantity: Decimal::ZERO,
                amount: Decimal::ZERO,
                lines: 0,
                first_period_start: l.period_start,
            });
        share.quantity += l.quantity;
        share.amount += l.amount;
        share.lines += 1;
        share.first_period_start = share.first_period_start.min(l.period_start);
    }
    let mut resources: Vec<ResourceShare> = by_resource.into_values().collect();
    resources.sort_by(|a, b| {
        b.amount
            .cmp(&a.amount)
            .then_with(|| a.resource_id.cmp(&b.resource_id))
    });
    let current_amount: Decimal = behind.iter().map(|l| l.amount).sum();
    // A correction line carries only the difference, so its own exact
    // amount is no measure of the period's lines.
    let changed_since_invoiced = !line.correction && current_amount != line.exact_amount;
    let priced_by = priced_by(db, &behind).await?;
    Ok(Some(InvoiceLineExplanation {
        invoice_id: doc.invoice_id,
        invoice_status: doc.status,
        currency: doc.currency.code().to_string(),
        line,
        resources,
        current_amount: current_amount.normalize(),
        changed_since_invoiced,
        priced_by,
    }))
}
