//! Cost and usage summaries: rated usage added up by any combination of
//! account, project, service, meter, resource and attribute, per hour, day
//! or month, or over the whole range.
//!
//! Day and month summaries read the daily cells of the current rating runs
//! (`usage_rollups`), which the database adds up, so their cost does not
//! grow with the number of hourly lines. Hour buckets need the lines
//! themselves and are limited to [`MAX_HOURLY_DAYS`] days.
//!
//! The caller's scope is part of the SQL (project readers: their project;
//! account readers: the projects their account owns, directly or through
//! its domains), so nothing outside it is read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_core::rollup::{
    AMOUNT_SCALE, DAY_US, QUANTITY_SCALE, from_scaled, next_utc_month_start, utc_month_start,
};
use tally_core::service::service_of;
use tally_core::{Identity, RatedLine, Role};
use tally_db::{Database, Param};
use tally_rate::plans::Owners;
use tally_store::objects::RawObjects;

use crate::ShowError;

/// Longest range an hourly summary reads lines for.
pub const MAX_HOURLY_DAYS: i64 = 31;
/// Rows per page when the caller does not say.
pub const DEFAULT_LIMIT: usize = 1000;
/// Most rows one page holds.
pub const MAX_LIMIT: usize = 10_000;

/// A time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Bucket {
    /// No time bucket: one row per group over the whole range.
    #[default]
    Total,
    /// UTC hours (reads rated lines; at most [`MAX_HOURLY_DAYS`] days).
    Hour,
    /// UTC days.
    Day,
    /// Calendar months, UTC.
    Month,
}

impl FromStr for Bucket {
    type Err = ShowError;
    fn from_str(s: &str) -> Result<Bucket, ShowError> {
        match s {
            "" | "total" | "none" => Ok(Bucket::Total),
            "hour" => Ok(Bucket::Hour),
            "day" => Ok(Bucket::Day),
            "month" => Ok(Bucket::Month),
            other => Err(ShowError::Invalid(format!(
                "unknown bucket '{other}': use hour, day, month or total"
            ))),
        }
    }
}

/// What rows are grouped by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    /// The billing account that owns the project ('' when none does).
    Account,
    /// The Keystone project.
    Project,
    /// The cloud service of the meter (Compute, Block Storage, ...).
    Service,
    /// The rated meter.
    Meter,
    /// The resource.
    Resource,
    /// A group-by or location attribute of the lines (`flavor`,
    /// `volume_type`, `availability_zone`, `region`); '' when a line has
    /// none.
    Attribute(String),
}

impl Dimension {
    /// The key of this dimension in a row.
    pub fn key(&self) -> String {
        match self {
            Dimension::Account => "account_id".into(),
            Dimension::Project => "project_id".into(),
            Dimension::Service => "service".into(),
            Dimension::Meter => "meter".into(),
            Dimension::Resource => "resource_id".into(),
            Dimension::Attribute(a) => a.clone(),
        }
    }

    /// The cell column the dimension is computed from.
    fn column(&self) -> &'static str {
        match self {
            Dimension::Account | Dimension::Project => "project_id",
            Dimension::Service | Dimension::Meter => "meter",
            Dimension::Resource => "resource_id",
            Dimension::Attribute(_) => "attributes",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl FromStr for Dimension {
    type Err = ShowError;
    fn from_str(s: &str) -> Result<Dimension, ShowError> {
        let s = s.trim();
        Ok(match s {
            "account" | "account_id" => Dimension::Account,
            "project" | "project_id" => Dimension::Project,
            "service" => Dimension::Service,
            "meter" => Dimension::Meter,
            "resource" | "resource_id" => Dimension::Resource,
            "" => {
                return Err(ShowError::Invalid(
                    "an empty group_by entry: name account, project, service, meter, resource or an attribute".into(),
                ));
            }
            other => {
                let name = other.strip_prefix("attribute:").unwrap_or(other);
                if !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
                {
                    return Err(ShowError::Invalid(format!(
                        "group_by '{other}' is not an attribute name (letters, digits, '_', '.', '-')"
                    )));
                }
                Dimension::Attribute(name.to_string())
            }
        })
    }
}

/// Parses a comma-separated `group_by` list.
pub fn parse_group_by(text: &str) -> Result<Vec<Dimension>, ShowError> {
    let mut dims = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let d: Dimension = part.parse()?;
        if !dims.contains(&d) {
            dims.push(d);
        }
    }
    Ok(dims)
}

/// What to add up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SummaryQuery {
    /// Start of the range (rounded down to midnight UTC for day and month
    /// buckets and totals).
    pub from: Option<DateTime<Utc>>,
    /// End of the range, exclusive (rounded up to midnight UTC likewise).
    pub to: Option<DateTime<Utc>>,
    /// The dimensions of a row, in order.
    pub group_by: Vec<Dimension>,
    /// The time bucket.
    pub bucket: Bucket,
    /// Only this project.
    pub project_id: Option<String>,
    /// Only projects of this account.
    pub account_id: Option<String>,
    /// Only this service (its name, as in rows).
    pub service: Option<String>,
    /// Only this meter.
    pub meter: Option<String>,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// Only lines whose attribute has this value.
    pub attributes: BTreeMap<String, String>,
    /// Rows to skip.
    pub offset: usize,
    /// Most rows returned (default [`DEFAULT_LIMIT`]).
    pub limit: Option<usize>,
}

/// One row of a summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SummaryRow {
    /// The bucket's start, when bucketed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_start: Option<DateTime<Utc>>,
    /// The dimensions' values, by key (`project_id`, `service`, `flavor`).
    #[serde(flatten)]
    pub dimensions: BTreeMap<String, String>,
    /// The currency of `amount` ('' for usage no plan priced).
    pub currency: String,
    /// The cost.
    pub amount: Decimal,
    /// The quantity, when every line of the row has the same unit.
    pub quantity: Option<Decimal>,
    /// That unit.
    pub unit: Option<String>,
    /// Rated lines behind the row.
    pub lines: i64,
    /// Of which could not be priced.
    pub unpriced_lines: i64,
    /// In a summary over the whole range (no bucket): the start of the
    /// latest day with usage in the row, so a resource's row can point at
    /// a day to explain without a row per day. Absent when the answer was
    /// read from monthly totals, which do not know their days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_start: Option<DateTime<Utc>>,
}

/// A total per currency.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CurrencyTotal {
    /// The currency.
    pub currency: String,
    /// The sum of every row (not only the page).
    pub amount: Decimal,
}

/// A page of a summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Summary {
    /// The range added up (after rounding to days where it applies).
    pub from: DateTime<Utc>,
    /// Its end, exclusive.
    pub to: DateTime<Utc>,
    /// The time bucket.
    pub bucket: Bucket,
    /// The dimensions, by key.
    pub group_by: Vec<String>,
    /// This page's rows: by bucket, then largest amount first.
    pub rows: Vec<SummaryRow>,
    /// Rows in all pages.
    pub total_rows: usize,
    /// The page's first row.
    pub offset: usize,
    /// The page size.
    pub limit: usize,
    /// Totals per currency over every row.
    pub totals: Vec<CurrencyTotal>,
}

/// The projects an account owns, as SQL with one bind (`{a}`): directly,
/// and through its domains unless another account owns the project
/// directly (the order `Owners` resolves in).
pub(crate) fn account_projects(a: usize) -> String {
    format!(
        "SELECT keystone_id FROM account_ownership WHERE kind = 'project' AND account_id = ${a} \
         UNION SELECT kp.project_id FROM keystone_projects kp JOIN account_ownership ao \
         ON ao.kind = 'domain' AND ao.keystone_id = kp.domain_id WHERE ao.account_id = ${a} \
         AND NOT EXISTS (SELECT 1 FROM account_ownership d WHERE d.kind = 'project' AND d.keystone_id = kp.project_id)"
    )
}

/// Which of the optional text columns a summary's SQL selects, in the
/// order it selects them (a `BTreeSet`'s: attributes, meter, project_id,
/// resource_id).
#[derive(Debug, Clone, Copy)]
struct Present {
    attributes: bool,
    meter: bool,
    project_id: bool,
    resource_id: bool,
}

/// Reading a column by position, the same way from sqlx's rows (the
/// PostgreSQL backend) and from rusqlite's (SQLite, see
/// `tally_db::SqliteReads`).
trait Columns {
    type Error;
    fn int(&self, i: usize) -> Result<i64, Self::Error>;
    fn maybe_int(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    fn text(&self, i: usize) -> Result<String, Self::Error>;
}

impl Columns for sqlx::any::AnyRow {
    type Error = sqlx::Error;
    fn int(&self, i: usize) -> Result<i64, sqlx::Error> {
        sqlx::Row::try_get(self, i)
    }
    fn maybe_int(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        sqlx::Row::try_get(self, i)
    }
    fn text(&self, i: usize) -> Result<String, sqlx::Error> {
        sqlx::Row::try_get(self, i)
    }
}

impl Columns for tally_db::rusqlite::Row<'_> {
    type Error = tally_db::rusqlite::Error;
    fn int(&self, i: usize) -> Result<i64, Self::Error> {
        self.get(i)
    }
    fn maybe_int(&self, i: usize) -> Result<Option<i64>, Self::Error> {
        self.get(i)
    }
    fn text(&self, i: usize) -> Result<String, Self::Error> {
        self.get(i)
    }
}

/// One row of a day or month summary's SQL.
struct SumRow {
    day: i64,
    last_day: Option<i64>,
    attributes: Option<String>,
    meter: Option<String>,
    project_id: Option<String>,
    resource_id: Option<String>,
    unit: String,
    last_unit: String,
    currency: String,
    quantity: Decimal,
    amount: Decimal,
    lines: i64,
    errors: i64,
}

impl SumRow {
    /// The columns are: day, last day, the present text columns, least and
    /// greatest unit, currency, quantity and amount each as whole units
    /// and a scaled fraction, line count, error count.
    fn decode<R: Columns>(row: &R, present: Present) -> Result<SumRow, R::Error> {
        let mut i = 2;
        let mut text = |is: bool| -> Result<Option<String>, R::Error> {
            if !is {
                return Ok(None);
            }
            i += 1;
            row.text(i - 1).map(Some)
        };
        let attributes = text(present.attributes)?;
        let meter = text(present.meter)?;
        let project_id = text(present.project_id)?;
        let resource_id = text(present.resource_id)?;
        let exact = |at: usize, scale: u32| -> Result<Decimal, R::Error> {
            Ok(Decimal::from(row.int(at)?) + from_scaled(row.int(at + 1)?, scale))
        };
        Ok(SumRow {
            day: row.int(0)?,
            last_day: row.maybe_int(1)?,
            attributes,
            meter,
            project_id,
            resource_id,
            unit: row.text(i)?,
            last_unit: row.text(i + 1)?,
            currency: row.text(i + 2)?,
            quantity: exact(i + 3, QUANTITY_SCALE)?.normalize(),
            amount: exact(i + 5, AMOUNT_SCALE)?.normalize(),
            lines: row.int(i + 7)?,
            errors: row.int(i + 8)?,
        })
    }
}

/// Whether the rows read are limited to named projects: a tenant's scope,
/// a project or an account.
fn names_projects(identity: &Identity, query: &SummaryQuery) -> bool {
    identity.role != Role::Admin || query.project_id.is_some() || query.account_id.is_some()
}

/// Which rows a day or month summary adds up: the coarsest level that
/// still holds every dimension and filter of the query (see tally-rate's
/// `levels.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Daily cells per resource of the current runs (`usage_rollups`
    /// through the coverage join): needed for resources by day, or over
    /// part of a month.
    Resource,
    /// Current usage per resource × meter × UTC month: resources over
    /// whole months without a day bucket.
    ResourceMonths,
    /// Current usage per project × meter × day.
    ProjectDays,
    /// Current usage per project × day, every meter together: days asked
    /// only by project or account.
    ProjectDayTotals,
    /// Current usage per project × meter × UTC month: whole months without
    /// a day bucket.
    ProjectMonths,
    /// Current usage per project × UTC month, every meter together: whole
    /// months asked only by project or account.
    ProjectMonthTotals,
    /// Current usage per meter × day of the whole cloud: operators'
    /// questions about no project in particular.
    CloudDays,
}

impl Level {
    /// `from` and `to` are already whole UTC days.
    fn for_query(
        identity: &Identity,
        query: &SummaryQuery,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Level {
        let whole_months = matches!(query.bucket, Bucket::Total | Bucket::Month)
            && utc_month_start(from) == from
            && utc_month_start(to) == to;
        if query.group_by.contains(&Dimension::Resource) || query.resource_id.is_some() {
            return if whole_months {
                Level::ResourceMonths
            } else {
                Level::Resource
            };
        }
        let needs_project = query
            .group_by
            .iter()
            .any(|d| matches!(d, Dimension::Project | Dimension::Account))
            || names_projects(identity, query);
        let by_project_only = query
            .group_by
            .iter()
            .all(|d| matches!(d, Dimension::Project | Dimension::Account))
            && query.meter.is_none()
            && query.service.is_none()
            && query.attributes.is_empty();
        match (needs_project, whole_months) {
            (true, true) if by_project_only => Level::ProjectMonthTotals,
            (true, true) => Level::ProjectMonths,
            (true, false) if by_project_only => Level::ProjectDayTotals,
            (true, false) => Level::ProjectDays,
            (false, _) => Level::CloudDays,
        }
    }

    /// The rows read. `by_project`: the query names its projects (a scope,
    /// a project or an account), so the resource cells are best read
    /// through their project index first, each then checked against its
    /// run's coverage; SQLite takes `CROSS JOIN` as that order (PostgreSQL
    /// plans it as an inner join). Without it, reading the coverage first
    /// and each run's cells by its index is better.
    fn from(self, by_project: bool) -> &'static str {
        match self {
            Level::Resource if by_project => "usage_rollups u CROSS JOIN rated_coverage c",
            Level::Resource => "usage_rollups u JOIN rated_coverage c ON TRUE",
            Level::ProjectDays => "usage_project_days u",
            Level::ProjectDayTotals => "usage_project_day_totals u",
            Level::ResourceMonths => "usage_resource_months u",
            Level::ProjectMonths => "usage_project_months u",
            Level::ProjectMonthTotals => "usage_project_month_totals u",
            Level::CloudDays => "usage_cloud_days u",
        }
    }

    /// The range condition on binds $1 (from) and $2 (to) (and, for the
    /// resource cells, the coverage join's).
    fn range(self) -> &'static str {
        match self {
            Level::Resource => {
                "c.run_id = u.run_id AND u.from_us >= c.from_us AND u.to_us <= c.to_us \
                 AND u.from_us >= $1 AND u.to_us <= $2"
            }
            Level::ProjectDays | Level::ProjectDayTotals | Level::CloudDays => {
                "u.day_us >= $1 AND u.day_us < $2"
            }
            Level::ResourceMonths | Level::ProjectMonths | Level::ProjectMonthTotals => {
                "u.month_us >= $1 AND u.month_us < $2"
            }
        }
    }

    /// The start of a row's day (or month).
    fn start(self) -> String {
        match self {
            Level::Resource => format!("(u.from_us / {DAY_US}) * {DAY_US}"),
            Level::ProjectDays | Level::ProjectDayTotals | Level::CloudDays => "u.day_us".into(),
            Level::ResourceMonths | Level::ProjectMonths | Level::ProjectMonthTotals => {
                "u.month_us".into()
            }
        }
    }

    /// The start of the latest day behind one row, where the level keeps
    /// it (a group's is the greatest of its rows').
    fn row_last_day(self) -> Option<String> {
        match self {
            Level::ProjectMonths | Level::ProjectMonthTotals => None,
            Level::ResourceMonths => Some("u.last_day_us".into()),
            _ => Some(self.start()),
        }
    }

    /// Whether the level's rows are read one by one and added up by the
    /// grouper rather than by the database. A month of a resource (per
    /// meter), or of a project with every meter together, is already about
    /// one row per group the SQL would form: grouping them in SQL merged
    /// almost nothing and cost SQLite a sort of every row (an account's top
    /// resources, about 800 rows: 4 of its 5.6 ms in SQLite alone).
    fn read_by_row(self) -> bool {
        matches!(self, Level::ResourceMonths | Level::ProjectMonthTotals)
    }

    /// The columns of a row's least and greatest unit.
    fn unit_columns(self) -> (&'static str, &'static str) {
        match self {
            Level::ProjectDayTotals | Level::ProjectMonthTotals => ("u.unit_min", "u.unit_max"),
            _ => ("u.unit", "u.unit"),
        }
    }

    /// Four exact sums (`tally_rate::levels::exact_sum_sql`): quantity's
    /// whole units and millionths, amount's whole units and billionths.
    fn sums(self) -> String {
        use tally_rate::levels::exact_sum_sql;
        let (quantity, amount) = match self {
            Level::Resource => (
                exact_sum_sql(None, "u.quantity_micro", QUANTITY_SCALE),
                exact_sum_sql(None, "u.amount_nano", AMOUNT_SCALE),
            ),
            _ => (
                exact_sum_sql(Some("u.quantity_whole"), "u.quantity_micro", QUANTITY_SCALE),
                exact_sum_sql(Some("u.amount_whole"), "u.amount_nano", AMOUNT_SCALE),
            ),
        };
        format!("{quantity}, {amount}")
    }
}

/// Whether the caller may see a project, given the account's projects.
fn in_scope(identity: &Identity, owners: &Owners, project_id: &str) -> bool {
    match &identity.role {
        Role::Admin => true,
        Role::ProjectReader { project_id: p } => p == project_id,
        Role::AccountReader { account_id } => owners.owner_of(project_id) == Some(account_id),
    }
}

#[derive(Default)]
struct Acc {
    last_us: Option<i64>,
    amount: Decimal,
    quantity: Decimal,
    units: BTreeSet<String>,
    lines: i64,
    errors: i64,
}

type GroupKey = (Option<i64>, Vec<String>, String);

struct Grouper<'a> {
    query: &'a SummaryQuery,
    owners: &'a Owners,
    groups: BTreeMap<GroupKey, Acc>,
}

/// One cell or line, as the grouper sees it.
struct Item<'a> {
    start_us: i64,
    /// The start of the latest day (or hour, or month) behind the item.
    last_us: Option<i64>,
    project_id: &'a str,
    meter: &'a str,
    resource_id: &'a str,
    attributes: &'a BTreeMap<String, String>,
    unit: &'a str,
    /// The greatest unit among the cells behind the item (the same as
    /// `unit` when they share one).
    last_unit: &'a str,
    currency: &'a str,
    quantity: Decimal,
    amount: Decimal,
    lines: i64,
    errors: i64,
}

impl Grouper<'_> {
    fn add(&mut self, item: Item<'_>) {
        let q = self.query;
        if q.service
            .as_deref()
            .is_some_and(|s| service_of(item.meter).name != s)
        {
            return;
        }
        if q.attributes
            .iter()
            .any(|(k, v)| item.attributes.get(k) != Some(v))
        {
            return;
        }
        let bucket = match q.bucket {
            Bucket::Total => None,
            Bucket::Hour => Some(item.start_us.div_euclid(3_600_000_000) * 3_600_000_000),
            Bucket::Day => Some(item.start_us.div_euclid(DAY_US) * DAY_US),
            Bucket::Month => {
                let t = DateTime::from_timestamp_micros(item.start_us).unwrap_or_default();
                Some(utc_month_start(t).timestamp_micros())
            }
        };
        let dims = q
            .group_by
            .iter()
            .map(|d| match d {
                Dimension::Account => self
                    .owners
                    .owner_of(item.project_id)
                    .unwrap_or("")
                    .to_string(),
                Dimension::Project => item.project_id.to_string(),
                Dimension::Service => service_of(item.meter).name.to_string(),
                Dimension::Meter => item.meter.to_string(),
                Dimension::Resource => item.resource_id.to_string(),
                Dimension::Attribute(a) => item.attributes.get(a).cloned().unwrap_or_default(),
            })
            .collect();
        let acc = self
            .groups
            .entry((bucket, dims, item.currency.to_string()))
            .or_default();
        acc.last_us = acc.last_us.max(item.last_us);
        acc.amount += item.amount;
        acc.quantity += item.quantity;
        for unit in [item.unit, item.last_unit] {
            if !acc.units.contains(unit) {
                acc.units.insert(unit.to_string());
            }
        }
        acc.lines += item.lines;
        acc.errors += item.errors;
    }

    fn finish(self, from: DateTime<Utc>, to: DateTime<Utc>) -> Summary {
        let q = self.query;
        let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
        let mut rows: Vec<SummaryRow> = self
            .groups
            .into_iter()
            .map(|((bucket, dims, currency), acc)| {
                *totals.entry(currency.clone()).or_default() += acc.amount;
                let one_unit = acc.units.len() == 1;
                SummaryRow {
                    bucket_start: bucket.and_then(DateTime::from_timestamp_micros),
                    dimensions: q.group_by.iter().map(Dimension::key).zip(dims).collect(),
                    currency,
                    amount: acc.amount.normalize(),
                    quantity: one_unit.then(|| acc.quantity.normalize()),
                    unit: if one_unit {
                        acc.units.into_iter().next()
                    } else {
                        None
                    },
                    lines: acc.lines,
                    unpriced_lines: acc.errors,
                    last_start: if q.bucket == Bucket::Total {
                        acc.last_us.and_then(DateTime::from_timestamp_micros)
                    } else {
                        None
                    },
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            a.bucket_start
                .cmp(&b.bucket_start)
                .then(b.amount.cmp(&a.amount))
                .then_with(|| a.dimensions.cmp(&b.dimensions))
                .then_with(|| a.currency.cmp(&b.currency))
        });
        let total_rows = rows.len();
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let rows = rows.into_iter().skip(q.offset).take(limit).collect();
        Summary {
            from,
            to,
            bucket: q.bucket,
            group_by: q.group_by.iter().map(Dimension::key).collect(),
            rows,
            total_rows,
            offset: q.offset,
            limit,
            totals: totals
                .into_iter()
                .map(|(currency, amount)| CurrencyTotal {
                    currency,
                    amount: amount.normalize(),
                })
                .collect(),
        }
    }
}

fn floor_day(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros().div_euclid(DAY_US) * DAY_US).unwrap_or(t)
}

fn ceil_day(t: DateTime<Utc>) -> DateTime<Utc> {
    let f = floor_day(t);
    if f == t { t } else { f + Duration::days(1) }
}

/// The range of a query: the given one, else the current UTC month.
pub(crate) fn range(
    query: &SummaryQuery,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ShowError> {
    let from = query.from.unwrap_or_else(|| utc_month_start(now));
    let to = query.to.unwrap_or_else(|| next_utc_month_start(now));
    if to <= from {
        return Err(ShowError::Invalid(format!(
            "the range is empty: 'to' ({to}) must be after 'from' ({from})"
        )));
    }
    Ok((from, to))
}

/// Adds up the current rated usage the caller may see.
pub async fn summarize(
    db: &Database,
    rated: &RawObjects,
    identity: &Identity,
    query: &SummaryQuery,
    now: DateTime<Utc>,
) -> Result<Summary, ShowError> {
    if reads_cells(query) {
        count_current(db, rated).await?;
    }
    let owners = if needs_owners(identity, query) {
        Owners::load(db).await?
    } else {
        Owners::default()
    };
    summarize_counted(db, rated, identity, query, &owners, now).await
}

/// Whether an answer depends on who owns which project: grouped by
/// account, or hourly (the lines are filtered by owner in Rust, not in
/// SQL) for an account or an account reader. Every other summary is
/// answered without reading every project's owner.
pub(crate) fn needs_owners(identity: &Identity, query: &SummaryQuery) -> bool {
    query.group_by.contains(&Dimension::Account)
        || (!reads_cells(query)
            && (query.account_id.is_some() || matches!(identity.role, Role::AccountReader { .. })))
}

/// Whether a summary reads the daily cells or a level above them (every
/// bucket but the hour, which reads the rated lines), and so needs
/// [`count_current`] first.
pub(crate) fn reads_cells(query: &SummaryQuery) -> bool {
    query.bucket != Bucket::Hour
}

/// Makes the daily cells and the levels above them count every current
/// run: builds the cells of a run that has none (a crash between a rating
/// commit and its cells) and recomputes the dirty days. Day and month
/// summaries read only those tables, so this must have run since the data
/// last changed; after it, it is a no-op until the `summary_version`
/// moves (see `SummaryCache`, which skips it until then).
pub async fn count_current(db: &Database, rated: &RawObjects) -> Result<(), ShowError> {
    tally_rate::cells::ensure_current(db, rated).await?;
    tally_rate::levels::refresh(db).await?;
    Ok(())
}

/// [`summarize`] without [`count_current`], for a caller that ran it
/// since the data last changed, with `owners` current when
/// [`needs_owners`] (else unused).
pub(crate) async fn summarize_counted(
    db: &Database,
    rated: &RawObjects,
    identity: &Identity,
    query: &SummaryQuery,
    owners: &Owners,
    now: DateTime<Utc>,
) -> Result<Summary, ShowError> {
    let (from, to) = range(query, now)?;
    let mut grouper = Grouper {
        query,
        owners,
        groups: BTreeMap::new(),
    };
    if !reads_cells(query) {
        if to - from > Duration::days(MAX_HOURLY_DAYS) {
            return Err(ShowError::Invalid(format!(
                "hourly summaries cover at most {MAX_HOURLY_DAYS} days: narrow from/to or use bucket=day"
            )));
        }
        let account_projects = query.account_id.as_ref().map(|a| {
            owners
                .projects()
                .filter(|p| owners.owner_of(p) == Some(a))
                .map(str::to_string)
                .collect::<BTreeSet<_>>()
        });
        let keep = |l: &RatedLine| {
            in_scope(identity, owners, &l.project_id)
                && query.project_id.as_ref().is_none_or(|p| *p == l.project_id)
                && query.meter.as_ref().is_none_or(|m| *m == l.meter)
                && query
                    .resource_id
                    .as_ref()
                    .is_none_or(|r| *r == l.resource_id)
                && account_projects
                    .as_ref()
                    .is_none_or(|s| s.contains(&l.project_id))
        };
        // Lines are added as they are read: a month of a large cloud's
        // hourly lines is never held at once.
        tally_rate::runs::read_current_lines(db, rated, from, to, |l| {
            if !keep(&l) {
                return;
            }
            let attributes = tally_core::rollup::cell_attributes(&l.group, &l.attributes);
            grouper.add(Item {
                start_us: l.period_start.timestamp_micros(),
                last_us: Some(l.period_start.timestamp_micros()),
                project_id: &l.project_id,
                meter: &l.meter,
                resource_id: &l.resource_id,
                attributes: &attributes,
                unit: &l.unit,
                last_unit: &l.unit,
                currency: &l.currency,
                quantity: l.quantity,
                amount: l.amount,
                lines: 1,
                errors: i64::from(l.error.is_some()),
            });
        })
        .await?;
        return Ok(grouper.finish(from, to));
    }

    let (from, to) = (floor_day(from), ceil_day(to));
    let level = Level::for_query(identity, query, from, to);
    let mut columns: BTreeSet<&str> = query.group_by.iter().map(Dimension::column).collect();
    if query.service.is_some() {
        columns.insert("meter");
    }
    if !query.attributes.is_empty() {
        columns.insert("attributes");
    }
    let select: String = columns.iter().map(|c| format!(", u.{c}")).collect();
    // Only the conditions that apply are written, each a plain comparison,
    // so that the database can use its indexes (an `(unset OR column =
    // value)` form makes it read every row of the range).
    let mut binds: Vec<Param> = vec![
        Param::Int(from.timestamp_micros()),
        Param::Int(to.timestamp_micros()),
    ];
    let mut conditions = vec![level.range().to_string()];
    // Each condition is given the number of its bind.
    let mut condition = |sql: fn(usize) -> String, value: &str| {
        binds.push(Param::Text(value.to_string()));
        conditions.push(sql(binds.len()));
    };
    let project_is = |n| format!("u.project_id = ${n}");
    let in_account = |n| format!("u.project_id IN ({})", account_projects(n));
    match &identity.role {
        Role::Admin => {}
        Role::ProjectReader { project_id } => condition(project_is, project_id),
        Role::AccountReader { account_id } => condition(in_account, account_id),
    }
    if let Some(p) = &query.project_id {
        condition(project_is, p);
    }
    if let Some(m) = &query.meter {
        condition(|n| format!("u.meter = ${n}"), m);
    }
    if let Some(r) = &query.resource_id {
        condition(|n| format!("u.resource_id = ${n}"), r);
    }
    if let Some(a) = &query.account_id {
        condition(in_account, a);
    }
    let from_level = level.from(names_projects(identity, query));
    let conditions = conditions.join(" AND ");
    let (least, greatest) = level.unit_columns();
    let null = || "CAST(NULL AS BIGINT)".to_string();
    // Every form selects: day, last day, the text columns, least and
    // greatest unit, currency, quantity and amount (whole units and
    // fraction each), lines and unpriced lines (see `SumRow::decode`).
    let sql = if level.read_by_row() {
        format!(
            "SELECT {start} AS day, {last} AS last_day{select}, {least}, {greatest}, u.currency, \
             u.quantity_whole, u.quantity_micro, u.amount_whole, u.amount_nano, \
             u.line_count, u.error_count FROM {from_level} WHERE {conditions}",
            start = level.start(),
            last = level.row_last_day().unwrap_or_else(null),
        )
    } else {
        // Without a time bucket, rows are not split by day: a month of a
        // resource's cells is one group, not 31 (the grouper ignores the start
        // of a row then).
        let (start, by_day) = if query.bucket == Bucket::Total {
            (format!("MIN({})", level.start()), "")
        } else {
            (level.start(), "day, ")
        };
        let grouped: String = columns.iter().map(|c| format!("u.{c}, ")).collect();
        format!(
            // Units are not grouped by: a row of several units shows no
            // quantity, so the least and greatest unit say all that is
            // needed (and a cost by project reads one row per project, not
            // one per unit).
            "SELECT {start} AS day, {last} AS last_day{select}, MIN({least}), MAX({greatest}), \
             u.currency, {sums}, CAST(SUM(u.line_count) AS BIGINT), \
             CAST(SUM(u.error_count) AS BIGINT) \
             FROM {from_level} WHERE {conditions} GROUP BY {by_day}{grouped}u.currency",
            last = level
                .row_last_day()
                .map_or_else(null, |d| format!("MAX({d})")),
            sums = level.sums(),
        )
    };
    let present = Present {
        attributes: columns.contains("attributes"),
        meter: columns.contains("meter"),
        project_id: columns.contains("project_id"),
        resource_id: columns.contains("resource_id"),
    };
    let rows: Vec<SumRow> = match db.sqlite_reads() {
        Some(reads) => {
            reads
                .query(sql, binds, move |r| SumRow::decode(r, present))
                .await?
        }
        None => {
            // Only whitelisted column names and numbered placeholders are
            // formatted into this text.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for b in binds {
                q = match b {
                    Param::Int(i) => q.bind(i),
                    Param::Text(t) => q.bind(t),
                };
            }
            q.fetch_all(&db.pool)
                .await?
                .iter()
                .map(|r| SumRow::decode(r, present))
                .collect::<Result<_, _>>()?
        }
    };
    let empty = BTreeMap::new();
    for row in &rows {
        let attrs: Option<BTreeMap<String, String>> = row
            .attributes
            .as_deref()
            .map(|a| serde_json::from_str(a).unwrap_or_default());
        grouper.add(Item {
            start_us: row.day,
            last_us: row.last_day,
            project_id: row.project_id.as_deref().unwrap_or(""),
            meter: row.meter.as_deref().unwrap_or(""),
            resource_id: row.resource_id.as_deref().unwrap_or(""),
            attributes: attrs.as_ref().unwrap_or(&empty),
            unit: &row.unit,
            last_unit: &row.last_unit,
            currency: &row.currency,
            quantity: row.quantity,
            amount: row.amount,
            lines: row.lines,
            errors: row.errors,
        });
    }
    Ok(grouper.finish(from, to))
}
