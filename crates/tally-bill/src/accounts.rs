//! Billing accounts: who pays, in which currency, on which plan, for which
//! Keystone projects.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tally_core::billing::{
    Coupon, Party, PaymentMode, PeriodLabel, check_billing_day, earliest_open_period,
    parse_timezone,
};
use tally_core::invoice::{Discount, TaxRate};
use tally_core::{Currency, Money};
use tally_db::Database;

use crate::{AccountScope, BillingError, decimal, instant};

/// A billing account as an operator describes it (CLI flags, API body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountSpec {
    /// Operator-chosen id (`acme`): letters, digits, `-`, `_`, `.`.
    pub account_id: String,
    /// Display name; the buyer's name on invoices unless `contact.name` is set.
    pub name: String,
    /// ISO 4217 currency every invoice of the account is in.
    pub currency: Currency,
    /// `prepaid` or `postpaid`.
    #[serde(default = "postpaid")]
    pub payment_mode: PaymentMode,
    /// Day of the month periods start on (1 = calendar months; up to 28).
    #[serde(default = "one")]
    pub billing_day: u32,
    /// IANA timezone of period boundaries.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Tax rates applied to every invoice.
    #[serde(default)]
    pub taxes: Vec<TaxRate>,
    /// Least a period costs before tax.
    #[serde(default)]
    pub minimum_commitment: Option<Decimal>,
    /// Prepaid balance under which an alert is raised.
    #[serde(default)]
    pub low_balance: Option<Decimal>,
    /// Days between issue and due date.
    #[serde(default = "thirty")]
    pub payment_terms_days: u32,
    /// Invoice number series (`INV` gives `INV-000001`).
    #[serde(default = "inv")]
    pub series: String,
    /// Billing contact: the buyer on invoices.
    #[serde(default)]
    pub contact: Party,
}

fn postpaid() -> PaymentMode {
    PaymentMode::Postpaid
}
fn one() -> u32 {
    1
}
fn utc() -> String {
    "UTC".into()
}
fn thirty() -> u32 {
    30
}
fn inv() -> String {
    "INV".into()
}

/// A stored billing account.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Account {
    /// What the operator gave.
    #[serde(flatten)]
    pub spec: AccountSpec,
    /// Projects it owns directly.
    pub projects: Vec<String>,
    /// Domains it owns (all their projects).
    pub domains: Vec<String>,
    /// Plan assignments, earliest first.
    pub plans: Vec<PlanAssignment>,
    /// Coupons granted.
    pub coupons: Vec<Coupon>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl Account {
    /// The party invoices are addressed to.
    pub fn buyer(&self) -> Party {
        let mut p = self.spec.contact.clone();
        if p.name.is_empty() {
            p.name = self.spec.name.clone();
        }
        p
    }

    /// The account's timezone (validated when stored).
    pub fn timezone(&self) -> chrono_tz::Tz {
        parse_timezone(&self.spec.timezone).unwrap_or(chrono_tz::Tz::UTC)
    }
}

/// A price plan in force for an account from an instant on, until an
/// optional end (then the plan assigned before it resumes, or the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanAssignment {
    /// The plan.
    pub plan_id: String,
    /// From when.
    pub from: DateTime<Utc>,
    /// Until when (exclusive); open-ended when absent.
    pub to: Option<DateTime<Utc>>,
}

fn check_id(what: &str, id: &str) -> Result<(), BillingError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(BillingError::Invalid(format!(
            "{what} '{id}' is not usable: use 1–64 letters, digits, '-', '_' or '.'"
        )))
    }
}

impl AccountSpec {
    /// Checks everything a stored account relies on.
    pub fn validate(&self) -> Result<(), BillingError> {
        check_id("account id", &self.account_id)?;
        check_id("invoice series", &self.series)?;
        if self.name.trim().is_empty() {
            return Err(BillingError::Invalid(format!(
                "account '{}' needs a name",
                self.account_id
            )));
        }
        check_billing_day(self.billing_day)?;
        parse_timezone(&self.timezone)?;
        for t in &self.taxes {
            if t.rate < Decimal::ZERO || t.rate >= Decimal::ONE {
                return Err(BillingError::Invalid(format!(
                    "tax '{}' has rate {}: write it as a fraction from 0 to below 1 (0.19 for 19%)",
                    t.name, t.rate
                )));
            }
        }
        for (what, v) in [
            ("minimum commitment", self.minimum_commitment),
            ("low-balance threshold", self.low_balance),
        ] {
            if let Some(v) = v
                && v < Decimal::ZERO
            {
                return Err(BillingError::Invalid(format!(
                    "the {what} is {v}: it must be zero or more"
                )));
            }
        }
        Ok(())
    }
}

/// Creates an account. Refuses an id already taken.
pub async fn create_account(db: &Database, spec: &AccountSpec) -> Result<Account, BillingError> {
    spec.validate()?;
    let done = sqlx::query(
        "INSERT INTO billing_accounts (account_id, name, currency, payment_mode, billing_day, timezone, \
         taxes, minimum_commitment, low_balance, payment_terms_days, series, contact, created_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(&spec.account_id)
    .bind(&spec.name)
    .bind(spec.currency.code())
    .bind(spec.payment_mode.as_str())
    .bind(spec.billing_day as i64)
    .bind(&spec.timezone)
    .bind(json(&spec.taxes))
    .bind(spec.minimum_commitment.map(|d| d.to_string()))
    .bind(spec.low_balance.map(|d| d.to_string()))
    .bind(spec.payment_terms_days as i64)
    .bind(&spec.series)
    .bind(json(&spec.contact))
    .bind(Utc::now().timestamp_micros())
    .execute(&db.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(BillingError::AccountExists(spec.account_id.clone()));
    }
    get_account(db, &AccountScope::All, &spec.account_id).await
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("account fields serialize")
}

/// The columns [`spec_from_row`] reads, for every query of accounts.
const ACCOUNT_COLUMNS: &str = "account_id, name, currency, payment_mode, billing_day, timezone, \
     taxes, minimum_commitment, low_balance, payment_terms_days, series, contact, created_at_us";

fn spec_from_row(row: &sqlx::any::AnyRow) -> Result<(AccountSpec, DateTime<Utc>), BillingError> {
    let text = |c: &str| row.try_get::<String, _>(c);
    let opt = |c: &str| -> Result<Option<Decimal>, BillingError> {
        match row.try_get::<Option<String>, _>(c)? {
            Some(t) => Ok(Some(decimal(c, &t)?)),
            None => Ok(None),
        }
    };
    let bad = |c: &str, e: String| BillingError::Invalid(format!("stored account {c}: {e}"));
    let spec = AccountSpec {
        account_id: text("account_id")?,
        name: text("name")?,
        currency: text("currency")?
            .parse()
            .map_err(|e: tally_core::MoneyError| bad("currency", e.to_string()))?,
        payment_mode: text("payment_mode")?
            .parse()
            .map_err(|e| bad("payment_mode", e))?,
        billing_day: row.try_get::<i64, _>("billing_day")? as u32,
        timezone: text("timezone")?,
        taxes: serde_json::from_str(&text("taxes")?).map_err(|e| bad("taxes", e.to_string()))?,
        minimum_commitment: opt("minimum_commitment")?,
        low_balance: opt("low_balance")?,
        payment_terms_days: row.try_get::<i64, _>("payment_terms_days")? as u32,
        series: text("series")?,
        contact: serde_json::from_str(&text("contact")?)
            .map_err(|e| bad("contact", e.to_string()))?,
    };
    Ok((spec, instant(row.try_get("created_at_us")?)))
}

/// One account the caller may see, with what it owns.
pub async fn get_account(
    db: &Database,
    scope: &AccountScope,
    account_id: &str,
) -> Result<Account, BillingError> {
    let (all, one) = scope.binds();
    let q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM billing_accounts WHERE account_id = $1 AND ($2 OR account_id = $3)"
    )))
    .bind(account_id)
    .bind(all)
    .bind(one);
    let row = q
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| BillingError::UnknownAccount(account_id.to_string()))?;
    let spec = spec_from_row(&row)?;
    Ok(complete(db, vec![spec])
        .await?
        .pop()
        .expect("one account in, one out"))
}

/// Adds what accounts own, their plans and coupons: three queries for any
/// number of accounts (an invoice run lists every account).
async fn complete(
    db: &Database,
    specs: Vec<(AccountSpec, DateTime<Utc>)>,
) -> Result<Vec<Account>, BillingError> {
    // One account: filter in SQL; many: read the tables whole.
    let (all, one) = match specs.as_slice() {
        [(only, _)] => (false, Some(only.account_id.clone())),
        _ => (true, None),
    };
    let owned: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT account_id, kind, keystone_id FROM account_ownership \
         WHERE ($1 OR account_id = $2) ORDER BY kind, keystone_id",
    )
    .bind(all)
    .bind(&one)
    .fetch_all(&db.pool)
    .await?;
    let plans: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT account_id, plan_id, from_us, to_us FROM plan_assignments \
         WHERE ($1 OR account_id = $2) ORDER BY from_us",
    )
    .bind(all)
    .bind(&one)
    .fetch_all(&db.pool)
    .await?;
    let mut coupons = coupons_of(db, all, one.as_deref()).await?;
    let mut by_id: HashMap<String, Account> = HashMap::with_capacity(specs.len());
    let mut order = Vec::with_capacity(specs.len());
    for (spec, created_at) in specs {
        order.push(spec.account_id.clone());
        by_id.insert(
            spec.account_id.clone(),
            Account {
                projects: Vec::new(),
                domains: Vec::new(),
                plans: Vec::new(),
                coupons: coupons.remove(&spec.account_id).unwrap_or_default(),
                created_at,
                spec,
            },
        );
    }
    for (account, kind, id) in owned {
        if let Some(a) = by_id.get_mut(&account) {
            if kind == "project" {
                a.projects.push(id);
            } else {
                a.domains.push(id);
            }
        }
    }
    for (account, plan_id, from, to) in plans {
        if let Some(a) = by_id.get_mut(&account) {
            a.plans.push(PlanAssignment {
                plan_id,
                from: instant(from),
                to: to.map(instant),
            });
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect())
}

/// Every account the caller may see, by id.
pub async fn list_accounts(
    db: &Database,
    scope: &AccountScope,
) -> Result<Vec<Account>, BillingError> {
    let (all, one) = scope.binds();
    let q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM billing_accounts WHERE ($1 OR account_id = $2) ORDER BY account_id"
    )))
    .bind(all)
    .bind(one);
    let rows = q.fetch_all(&db.pool).await?;
    let specs = rows
        .iter()
        .map(spec_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    complete(db, specs).await
}

/// The accounts in scope, each with how many projects and domains it owns,
/// without listing them: a list of a large cloud's accounts would
/// otherwise read every ownership row.
pub async fn list_accounts_with_owned_count(
    db: &Database,
    scope: &AccountScope,
) -> Result<Vec<(AccountSpec, i64)>, BillingError> {
    let (all, one) = scope.binds();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS}, \
             (SELECT COUNT(*) FROM account_ownership o WHERE o.account_id = a.account_id) AS owned \
             FROM billing_accounts a WHERE ($1 OR account_id = $2) ORDER BY account_id"
    )))
    .bind(all)
    .bind(one)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            let (spec, _) = spec_from_row(row)?;
            Ok((spec, row.try_get::<i64, _>("owned")?))
        })
        .collect()
}

/// What an account can own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    /// One Keystone project.
    Project,
    /// A Keystone domain: all its projects, including later ones.
    Domain,
}

impl Owned {
    fn kind(self) -> &'static str {
        match self {
            Owned::Project => "project",
            Owned::Domain => "domain",
        }
    }
}

/// Gives a project or domain to an account. Refuses one another account
/// owns (move it with [`release`] first), so usage is never billed twice.
pub async fn own(
    db: &Database,
    account_id: &str,
    what: Owned,
    keystone_id: &str,
) -> Result<(), BillingError> {
    get_account(db, &AccountScope::All, account_id).await?;
    if keystone_id.trim().is_empty() {
        return Err(BillingError::Invalid(format!(
            "the {} id is empty",
            what.kind()
        )));
    }
    sqlx::query(
        "INSERT INTO account_ownership (kind, keystone_id, account_id) VALUES ($1, $2, $3) \
         ON CONFLICT (kind, keystone_id) DO NOTHING",
    )
    .bind(what.kind())
    .bind(keystone_id)
    .bind(account_id)
    .execute(&db.pool)
    .await?;
    let owner: String = sqlx::query_scalar(
        "SELECT account_id FROM account_ownership WHERE kind = $1 AND keystone_id = $2",
    )
    .bind(what.kind())
    .bind(keystone_id)
    .fetch_one(&db.pool)
    .await?;
    if owner != account_id {
        return Err(BillingError::Invalid(format!(
            "{} '{keystone_id}' belongs to account '{owner}': release it there first",
            what.kind()
        )));
    }
    Ok(())
}

/// Takes a project or domain away from an account; later usage of it is
/// unbilled until another account owns it.
pub async fn release(
    db: &Database,
    account_id: &str,
    what: Owned,
    keystone_id: &str,
) -> Result<(), BillingError> {
    let done = sqlx::query(
        "DELETE FROM account_ownership WHERE kind = $1 AND keystone_id = $2 AND account_id = $3",
    )
    .bind(what.kind())
    .bind(keystone_id)
    .bind(account_id)
    .execute(&db.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(BillingError::Invalid(format!(
            "account '{account_id}' does not own {} '{keystone_id}'",
            what.kind()
        )));
    }
    Ok(())
}

/// Records the Keystone domain of projects (from usage records, Keystone
/// notifications or an operator), so domain-owned accounts find them.
pub async fn record_project_domains(
    db: &Database,
    projects: &[(String, String)],
) -> Result<(), BillingError> {
    let now = Utc::now().timestamp_micros();
    let mut tx = db.pool.begin().await?;
    for (project, domain) in projects {
        sqlx::query(
            "INSERT INTO keystone_projects (project_id, domain_id, updated_at_us) VALUES ($1, $2, $3) \
             ON CONFLICT (project_id) DO UPDATE SET domain_id = excluded.domain_id, updated_at_us = excluded.updated_at_us",
        )
        .bind(project)
        .bind(domain)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Puts `plan_id` in force for an account from `from` on, until `to` if
/// given. Refuses a plan in another currency than the account's, and an
/// end that is not after the start.
pub async fn assign_plan(
    db: &Database,
    account_id: &str,
    plan_id: &str,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
) -> Result<(), BillingError> {
    if let Some(to) = to
        && to <= from
    {
        return Err(BillingError::Invalid(format!(
            "the assignment ends at {} but starts at {}: the end must be later",
            to.to_rfc3339(),
            from.to_rfc3339()
        )));
    }
    let account = get_account(db, &AccountScope::All, account_id).await?;
    let plan = tally_rate::plans::plan(db, plan_id).await?;
    if plan.currency != account.spec.currency {
        return Err(BillingError::CurrencyMismatch {
            plan: plan_id.to_string(),
            plan_currency: plan.currency.code().to_string(),
            account: account_id.to_string(),
            account_currency: account.spec.currency.code().to_string(),
        });
    }
    sqlx::query(
        "INSERT INTO plan_assignments (account_id, from_us, to_us, plan_id) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (account_id, from_us) DO UPDATE SET plan_id = excluded.plan_id, to_us = excluded.to_us",
    )
    .bind(account_id)
    .bind(from.timestamp_micros())
    .bind(to.map(|t| t.timestamp_micros()))
    .bind(plan_id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Grants a coupon. Refuses an expired or malformed one, and a fixed
/// amount on an account in another currency than the one named.
pub async fn grant_coupon(
    db: &Database,
    account_id: &str,
    coupon: &Coupon,
    now: DateTime<Utc>,
) -> Result<(), BillingError> {
    let account = get_account(db, &AccountScope::All, account_id).await?;
    check_id("coupon code", &coupon.code)?;
    let current = PeriodLabel::containing(now, account.spec.billing_day, account.timezone());
    let last_finalized: Option<String> = sqlx::query_scalar(
        "SELECT max(period) FROM invoices WHERE account_id = $1 AND status = 'finalized'",
    )
    .bind(account_id)
    .fetch_one(&db.pool)
    .await?;
    let last_finalized = last_finalized.map(|p| p.parse()).transpose()?;
    coupon.check_grant(earliest_open_period(current, last_finalized))?;
    let (kind, value) = match &coupon.discount {
        Discount::Percent(p) => ("percent", *p),
        Discount::Fixed(f) => {
            // Fixed amounts are in the account's currency; reject more
            // precision than it has so the invoice shows what was granted.
            let rounded = Money::new(*f, account.spec.currency).round_to_minor_unit();
            if rounded.amount != *f {
                return Err(BillingError::Invalid(format!(
                    "coupon '{}' is {f} {}: use at most {} decimals",
                    coupon.code,
                    account.spec.currency.code(),
                    account.spec.currency.minor_unit_digits()
                )));
            }
            ("fixed", *f)
        }
    };
    let done = sqlx::query(
        "INSERT INTO coupons (account_id, code, kind, value, first_period, periods) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account_id, code) DO NOTHING",
    )
    .bind(account_id)
    .bind(&coupon.code)
    .bind(kind)
    .bind(value.to_string())
    .bind(coupon.first_period.to_string())
    .bind(coupon.periods as i64)
    .execute(&db.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(BillingError::Invalid(format!(
            "account '{account_id}' already has coupon '{}'",
            coupon.code
        )));
    }
    Ok(())
}

/// The coupons of an account, by code.
pub async fn coupons(db: &Database, account_id: &str) -> Result<Vec<Coupon>, BillingError> {
    Ok(coupons_of(db, false, Some(account_id))
        .await?
        .remove(account_id)
        .unwrap_or_default())
}

/// Coupons per account (every account, or one), by code.
async fn coupons_of(
    db: &Database,
    all: bool,
    one: Option<&str>,
) -> Result<HashMap<String, Vec<Coupon>>, BillingError> {
    let rows: Vec<(String, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT account_id, code, kind, value, first_period, periods FROM coupons \
         WHERE ($1 OR account_id = $2) ORDER BY code",
    )
    .bind(all)
    .bind(one)
    .fetch_all(&db.pool)
    .await?;
    let mut out: HashMap<String, Vec<Coupon>> = HashMap::new();
    for (account, code, kind, value, first, periods) in rows {
        let value = decimal("coupon value", &value)?;
        out.entry(account).or_default().push(Coupon {
            discount: if kind == "percent" {
                Discount::Percent(value)
            } else {
                Discount::Fixed(value)
            },
            first_period: first.parse()?,
            periods: periods as u32,
            code,
        });
    }
    Ok(out)
}
