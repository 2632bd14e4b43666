//! The rating configuration in force, kept in the billing database: meter
//! definitions and price plans, stored as the documents operators wrote.
//!
//! Everything is validated before it is stored, so a bad file changes
//! nothing: the plan or definitions in force stay as they were.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_core::{Currency, DocumentError};
use tally_db::Database;
use tally_price::{PlanBook, PlanStarts, PricePlan};

use crate::meters::MeterSet;

/// Errors of the stored configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The document is not usable.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A read of many rows from the SQLite file failed.
    #[error(transparent)]
    Read(#[from] tally_db::ReadError),
    /// A stored document no longer parses (it was valid when stored).
    #[error("stored {what} no longer parses: {message}; apply it again")]
    Stored {
        /// Which document.
        what: String,
        /// The parse error.
        message: String,
    },
    /// No such plan.
    #[error("no price plan '{0}': list them with `tally plan list`")]
    NoPlan(String),
}

/// A plan document as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredPlan {
    /// The plan id.
    pub plan_id: String,
    /// `toml` or `cloudkitty`.
    pub format: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Whether it prices rating runs.
    pub is_default: bool,
    /// When it was applied (RFC 3339).
    pub applied_at: String,
    /// The document as given.
    #[serde(skip)]
    pub document: String,
}

/// The meter definitions in force: the stored document, else the default
/// OpenStack set.
pub async fn current_meters(db: &Database) -> Result<MeterSet, ConfigError> {
    MeterSet::from_toml(&current_meters_document(db).await?).map_err(|e| ConfigError::Stored {
        what: "meter definitions".into(),
        message: e.to_string(),
    })
}

/// The document of the meter definitions in force.
pub async fn current_meters_document(db: &Database) -> Result<String, ConfigError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT document FROM meter_definitions WHERE singleton = 1")
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.map_or_else(|| crate::meters::OPENSTACK_DEFAULT.to_string(), |r| r.0))
}

/// Replaces the meter definitions after validating them; every stored plan
/// must still refer only to defined meters.
pub async fn replace_meters(db: &Database, document: &str) -> Result<MeterSet, ConfigError> {
    let set = MeterSet::from_toml(document)?;
    let names = set.names();
    for plan in list_plans(db).await? {
        if plan.format == "toml" {
            PricePlan::from_toml(&plan.document, Some(&names)).map_err(|e| {
                DocumentError::Invalid {
                    path: format!("(plan {})", plan.plan_id),
                    message: format!(
                        "these definitions would break stored plan '{}': {e}",
                        plan.plan_id
                    ),
                }
            })?;
        }
    }
    sqlx::query(
        "INSERT INTO meter_definitions (singleton, document, applied_at_us) VALUES (1, $1, $2) \
         ON CONFLICT (singleton) DO UPDATE SET document = excluded.document, applied_at_us = excluded.applied_at_us",
    )
    .bind(document)
    .bind(Utc::now().timestamp_micros())
    .execute(&db.pool)
    .await?;
    Ok(set)
}

/// Validates a native plan against the definitions in force and stores it
/// (replacing a plan with the same id). The first plan stored, or any with
/// `make_default`, becomes the default.
pub async fn apply_plan(
    db: &Database,
    document: &str,
    make_default: bool,
) -> Result<PricePlan, ConfigError> {
    let meters = current_meters(db).await?;
    let plan = PricePlan::from_toml(document, Some(&meters.names()))?;
    store_plan(db, &plan, "toml", document, make_default).await?;
    Ok(plan)
}

/// Converts a CloudKitty hashmap listing into a plan and stores it.
pub async fn import_cloudkitty(
    db: &Database,
    plan_id: &str,
    currency: Currency,
    document: &str,
    make_default: bool,
) -> Result<PricePlan, ConfigError> {
    let plan = PricePlan::from_cloudkitty(plan_id, currency, document)?;
    let meters = current_meters(db).await?;
    let names = meters.names();
    if let Some(unknown) = plan
        .cloudkitty
        .keys()
        .find(|s| !names.contains(&s.as_str()))
    {
        return Err(DocumentError::Invalid {
            path: format!("services[name={unknown}]"),
            message: format!(
                "service '{unknown}' is not a defined meter: a CloudKitty service prices the rated meter of the same name; rename the service to one of {} or define a meter named '{unknown}' (tally meters --apply)",
                names.join(", ")
            ),
        }
        .into());
    }
    store_plan(db, &plan, "cloudkitty", document, make_default).await?;
    Ok(plan)
}

async fn store_plan(
    db: &Database,
    plan: &PricePlan,
    format: &str,
    document: &str,
    make_default: bool,
) -> Result<(), ConfigError> {
    let mut tx = db.begin_write().await?;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM price_plans WHERE plan_id <> $1")
        .bind(&plan.id)
        .fetch_one(&mut *tx)
        .await?;
    // Booleans are read as 0/1: the Any driver decodes no SQLite BOOLEAN.
    let was_default: Option<(i64,)> = sqlx::query_as(
        "SELECT CAST(CASE WHEN is_default THEN 1 ELSE 0 END AS BIGINT) FROM price_plans WHERE plan_id = $1",
    )
    .bind(&plan.id)
    .fetch_optional(&mut *tx)
    .await?;
    let is_default = make_default || count == 0 || was_default.is_some_and(|d| d.0 == 1);
    if is_default {
        sqlx::query("UPDATE price_plans SET is_default = FALSE")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO price_plans (plan_id, format, currency, document, is_default, applied_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (plan_id) DO UPDATE SET format = excluded.format, \
         currency = excluded.currency, document = excluded.document, is_default = excluded.is_default, \
         applied_at_us = excluded.applied_at_us",
    )
    .bind(&plan.id)
    .bind(format)
    .bind(plan.currency.code())
    .bind(document)
    .bind(is_default)
    .bind(Utc::now().timestamp_micros())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Every stored plan, by id.
pub async fn list_plans(db: &Database) -> Result<Vec<StoredPlan>, ConfigError> {
    let rows: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT plan_id, format, currency, document, \
         CAST(CASE WHEN is_default THEN 1 ELSE 0 END AS BIGINT), applied_at_us \
         FROM price_plans ORDER BY plan_id",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(plan_id, format, currency, document, is_default, at)| StoredPlan {
                plan_id,
                format,
                currency,
                is_default: is_default == 1,
                applied_at: chrono::DateTime::from_timestamp_micros(at)
                    .unwrap_or_default()
                    .to_rfc3339(),
                document,
            },
        )
        .collect())
}

fn parse_stored(p: &StoredPlan) -> Result<PricePlan, ConfigError> {
    let stored = |e: DocumentError| ConfigError::Stored {
        what: format!("plan '{}'", p.plan_id),
        message: e.to_string(),
    };
    match p.format.as_str() {
        "cloudkitty" => {
            let currency: Currency =
                p.currency
                    .parse()
                    .map_err(|e: tally_core::MoneyError| ConfigError::Stored {
                        what: format!("plan '{}'", p.plan_id),
                        message: e.to_string(),
                    })?;
            PricePlan::from_cloudkitty(&p.plan_id, currency, &p.document).map_err(stored)
        }
        _ => PricePlan::from_toml(&p.document, None).map_err(stored),
    }
}

/// The plan that prices rating runs, if one is stored.
pub async fn default_plan(db: &Database) -> Result<Option<PricePlan>, ConfigError> {
    list_plans(db)
        .await?
        .iter()
        .find(|p| p.is_default)
        .map(parse_stored)
        .transpose()
}

/// A stored plan by id.
pub async fn plan(db: &Database, plan_id: &str) -> Result<PricePlan, ConfigError> {
    list_plans(db)
        .await?
        .iter()
        .find(|p| p.plan_id == plan_id)
        .map(parse_stored)
        .transpose()?
        .ok_or_else(|| ConfigError::NoPlan(plan_id.to_string()))
}

/// Which account owns which project: direct ownership first, then the
/// owner of the project's domain.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    projects: HashMap<String, String>,
    domains: HashMap<String, String>,
    domain_of: HashMap<String, String>,
}

impl Owners {
    /// Loads the ownership tables.
    pub async fn load(db: &Database) -> Result<Owners, ConfigError> {
        const OWNED: &str = "SELECT kind, keystone_id, account_id FROM account_ownership";
        const DOMAIN_OF: &str = "SELECT project_id, domain_id FROM keystone_projects";
        // A cloud's every project, twice: on SQLite, read where SQLite
        // produces the rows rather than one at a time through sqlx.
        type Owned = Vec<(String, String, String)>;
        type DomainOf = Vec<(String, String)>;
        let (owned, domain_of): (Owned, DomainOf) = match db.sqlite_reads() {
            Some(reads) => (
                reads
                    .query(OWNED.into(), vec![], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .await?,
                reads
                    .query(DOMAIN_OF.into(), vec![], |r| Ok((r.get(0)?, r.get(1)?)))
                    .await?,
            ),
            None => (
                sqlx::query_as(OWNED).fetch_all(&db.pool).await?,
                sqlx::query_as(DOMAIN_OF).fetch_all(&db.pool).await?,
            ),
        };
        let mut o = Owners {
            domain_of: domain_of.into_iter().collect(),
            ..Owners::default()
        };
        for (kind, id, account) in owned {
            if kind == "project" {
                o.projects.insert(id, account);
            } else {
                o.domains.insert(id, account);
            }
        }
        Ok(o)
    }

    /// The account that pays for one project, asked of the database in the
    /// order [`Owners::owner_of`] resolves (direct ownership, then the
    /// project's domain): a page about one project need not load every
    /// owner of the cloud.
    pub async fn owner_of_one(
        db: &Database,
        project_id: &str,
    ) -> Result<Option<String>, ConfigError> {
        let owner: Option<(i64, String)> = sqlx::query_as(
            "SELECT 0, account_id FROM account_ownership WHERE kind = 'project' AND keystone_id = $1 \
             UNION ALL SELECT 1, ao.account_id FROM keystone_projects kp JOIN account_ownership ao \
             ON ao.kind = 'domain' AND ao.keystone_id = kp.domain_id WHERE kp.project_id = $1 \
             ORDER BY 1 LIMIT 1",
        )
        .bind(project_id)
        .fetch_optional(&db.pool)
        .await?;
        Ok(owner.map(|(_, account)| account))
    }

    /// Every project whose owner can be named: owned directly, or known to
    /// be in an owned domain.
    pub fn projects(&self) -> impl Iterator<Item = &str> {
        self.projects
            .keys()
            .chain(self.domain_of.keys())
            .map(String::as_str)
    }

    /// The account that pays for `project_id`, if any.
    pub fn owner_of(&self, project_id: &str) -> Option<&str> {
        self.projects
            .get(project_id)
            .or_else(|| {
                self.domain_of
                    .get(project_id)
                    .and_then(|d| self.domains.get(d))
            })
            .map(String::as_str)
    }
}

/// The plans in force for a rating run: the default plan, and for every
/// project whose billing account has plan assignments, those assignments.
pub async fn plan_book(db: &Database) -> Result<PlanBook, ConfigError> {
    let default = default_plan(db).await?.map(Arc::new);
    let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT account_id, plan_id, from_us, to_us FROM plan_assignments ORDER BY account_id, from_us",
    )
    .fetch_all(&db.pool)
    .await?;
    if rows.is_empty() {
        return Ok(PlanBook::single(default));
    }
    let mut parsed: HashMap<String, Arc<PricePlan>> = HashMap::new();
    let mut by_account: HashMap<String, PlanStarts> = HashMap::new();
    for (account, plan_id, from, to) in rows {
        let p = match parsed.get(&plan_id) {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(plan(db, &plan_id).await?);
                parsed.insert(plan_id, p.clone());
                p
            }
        };
        let instant = |us: i64| DateTime::from_timestamp_micros(us).unwrap_or_default();
        by_account
            .entry(account)
            .or_default()
            .push((instant(from), to.map(instant), p));
    }
    let owners = Owners::load(db).await?;
    let assignments = owners.projects().filter_map(|project| {
        let account = owners.owner_of(project)?;
        Some((project.to_string(), by_account.get(account)?.clone()))
    });
    Ok(PlanBook::new(default, assignments.collect::<Vec<_>>()))
}
