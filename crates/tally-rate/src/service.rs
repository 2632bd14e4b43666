//! What the CLI and the HTTP API call: rate a range, list lines, quote,
//! simulate. Each reads the configuration in force from the billing
//! database, so a server and a CLI over the same database agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_core::{Attributes, Identity, RatedLine, Role};
use tally_db::Database;
use tally_price::{LinePrice, PlanBook, PricePlan};
use tally_store::objects::RawObjects;

use crate::aggregate::{RatingWindow, WindowError};
use crate::job::{RatingConfig, RatingError, RatingRequest};
use crate::plans::{self, ConfigError};
use crate::runs::{self, RatingRun};

/// Errors a caller of the service can see.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The range or period is not usable.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// The stored configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The run failed.
    #[error(transparent)]
    Rating(#[from] RatingError),
    /// The request is not usable.
    #[error("{0}")]
    BadRequest(String),
}

/// The rating side of a Tally installation.
#[derive(Clone)]
pub struct RatingService {
    /// The billing database.
    pub db: Database,
    /// The raw store's segment files.
    pub raw: RawObjects,
    /// Where rated-line files go.
    pub rated: RawObjects,
    /// How runs use the machine.
    pub config: RatingConfig,
}

/// Which lines to list.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct LineFilter {
    /// Period start at or after.
    pub from: Option<DateTime<Utc>>,
    /// Period start before.
    pub to: Option<DateTime<Utc>>,
    /// Only this project.
    pub project_id: Option<String>,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// Only this rated meter.
    pub meter: Option<String>,
    /// Lines to skip (pagination).
    #[serde(default)]
    pub offset: usize,
    /// Most lines returned.
    pub limit: Option<usize>,
}

/// A rated line with its id, which `tally explain ID` and
/// `GET /v1/explain?line_id=ID` take.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IdentifiedLine {
    /// The line's id (`tally_core::line_id`): its coordinates.
    pub line_id: String,
    /// The line.
    #[serde(flatten)]
    pub line: RatedLine,
}

/// A page of lines.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinePage {
    /// The lines, ordered by project, resource, meter, group and period.
    pub lines: Vec<IdentifiedLine>,
    /// Lines matching the filter in all.
    pub total: usize,
    /// Sum of the matching lines' amounts, full precision.
    pub amount: Decimal,
}

/// What `POST /v1/quote` prices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuoteRequest {
    /// The rated meter.
    pub meter: String,
    /// The quantity, in the meter's unit.
    pub quantity: Decimal,
    /// Attributes the plan's rules match against.
    #[serde(default)]
    pub attributes: Attributes,
    /// The project (for project-scoped rules).
    pub project_id: String,
    /// When the usage happens (picks the plan version); default now.
    pub time: Option<DateTime<Utc>>,
    /// The plan; default the default plan.
    pub plan_id: Option<String>,
}

/// A quote.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Quote {
    /// The plan that priced it.
    pub plan_id: String,
    /// Its currency.
    pub currency: String,
    /// The meter's unit.
    pub unit: String,
    /// The rule that priced it: `rules[2]` (position in its version),
    /// `cloudkitty:<meter>`, or `unpriced`.
    pub rule: String,
    /// How it was priced.
    #[serde(flatten)]
    pub price: LinePrice,
}

/// One row of a simulation report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimulationRow {
    /// The project.
    pub project_id: String,
    /// The rated meter.
    pub meter: String,
    /// Amount of the current lines.
    pub current: Decimal,
    /// Amount with the candidate plan.
    pub candidate: Decimal,
    /// candidate − current.
    pub difference: Decimal,
}

/// The outcome of `tally plan simulate`.
#[derive(Debug, Clone, Serialize)]
pub struct Simulation {
    /// The candidate plan.
    pub plan_id: String,
    /// The range.
    pub from: DateTime<Utc>,
    /// Its end.
    pub to: DateTime<Utc>,
    /// Per project and meter, where either side has an amount.
    pub rows: Vec<SimulationRow>,
    /// Sum of current amounts.
    pub current_total: Decimal,
    /// Sum of candidate amounts.
    pub candidate_total: Decimal,
}

/// A line ordered for listing: project, resource, meter, group, period.
struct Listed(RatedLine);

impl Listed {
    fn key(&self) -> (&str, &str, &str, &BTreeMap<String, String>, DateTime<Utc>) {
        let l = &self.0;
        (
            &l.project_id,
            &l.resource_id,
            &l.meter,
            &l.group,
            l.period_start,
        )
    }
}

impl PartialEq for Listed {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Listed {}
impl PartialOrd for Listed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Listed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The project a caller is confined to, or `None` for an operator. Account
/// readers see no lines until the billing module maps accounts to projects.
fn scope(identity: &Identity) -> Option<Option<String>> {
    match &identity.role {
        Role::Admin => Some(None),
        Role::ProjectReader { project_id } => Some(Some(project_id.clone())),
        Role::AccountReader { .. } => None,
    }
}

impl RatingService {
    /// A rating window with the configured default period, unless given.
    pub fn window(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        period: Option<Duration>,
    ) -> Result<RatingWindow, ServiceError> {
        Ok(RatingWindow::new(
            from,
            to,
            period.unwrap_or(Duration::hours(1)),
        )?)
    }

    async fn request(
        &self,
        window: RatingWindow,
        plan: Option<PricePlan>,
    ) -> Result<RatingRequest, ServiceError> {
        let meters = plans::current_meters(&self.db).await?;
        // A candidate plan (simulation) prices every project; otherwise
        // projects are priced by their billing account's plan in force,
        // else the default plan.
        let plans = match plan {
            Some(p) => PlanBook::single(Some(Arc::new(p))),
            None => plans::plan_book(&self.db).await?,
        };
        Ok(RatingRequest {
            window,
            meters: Arc::new(meters),
            plans: Arc::new(plans),
        })
    }

    /// Rates a range with the definitions and default plan in force and
    /// makes its lines current.
    pub async fn rate(&self, window: RatingWindow) -> Result<RatingRun, ServiceError> {
        let request = self.request(window, None).await?;
        Ok(runs::run_and_commit(&self.db, &self.raw, &self.rated, &self.config, &request).await?)
    }

    /// Lists current lines the caller may see.
    pub async fn lines(
        &self,
        identity: &Identity,
        filter: &LineFilter,
    ) -> Result<LinePage, ServiceError> {
        let Some(project_scope) = scope(identity) else {
            return Ok(LinePage {
                lines: Vec::new(),
                total: 0,
                amount: Decimal::ZERO,
            });
        };
        let from = filter.from.unwrap_or(DateTime::<Utc>::MIN_UTC);
        let to = filter.to.unwrap_or(DateTime::<Utc>::MAX_UTC);
        let wanted = |l: &RatedLine| {
            project_scope.as_ref().is_none_or(|p| *p == l.project_id)
                && filter
                    .project_id
                    .as_ref()
                    .is_none_or(|p| *p == l.project_id)
                && filter
                    .resource_id
                    .as_ref()
                    .is_none_or(|r| *r == l.resource_id)
                && filter.meter.as_ref().is_none_or(|m| *m == l.meter)
        };
        // Keep only the first offset + limit lines in listing order (a
        // bounded max-heap), so listing a month of a large cloud does not
        // hold the month; totals still cover every matching line.
        let keep = filter
            .offset
            .saturating_add(filter.limit.unwrap_or(usize::MAX));
        let mut heap: std::collections::BinaryHeap<Listed> = std::collections::BinaryHeap::new();
        let mut total = 0usize;
        let mut amount = Decimal::ZERO;
        runs::read_current_lines(&self.db, &self.rated, from, to, |l| {
            if !wanted(&l) {
                return;
            }
            total += 1;
            amount += l.amount;
            if keep == 0 {
                return;
            }
            let listed = Listed(l);
            if heap.len() < keep {
                heap.push(listed);
            } else if heap.peek().is_some_and(|top| listed < *top) {
                heap.pop();
                heap.push(listed);
            }
        })
        .await?;
        let lines: Vec<IdentifiedLine> = heap
            .into_sorted_vec()
            .into_iter()
            .skip(filter.offset)
            .map(|l| IdentifiedLine {
                line_id: l.0.line_id(),
                line: l.0,
            })
            .collect();
        let amount = amount.normalize();
        Ok(LinePage {
            lines,
            total,
            amount,
        })
    }

    /// Prices a given usage with a stored plan, storing nothing.
    pub async fn quote(&self, q: &QuoteRequest) -> Result<Quote, ServiceError> {
        let plan = match &q.plan_id {
            Some(id) => plans::plan(&self.db, id).await?,
            None => plans::default_plan(&self.db).await?.ok_or_else(|| {
                ServiceError::BadRequest(
                    "no price plan is applied: apply one with `tally plan apply FILE` or name plan_id"
                        .into(),
                )
            })?,
        };
        let meters = plans::current_meters(&self.db).await?;
        let Some(def) = meters.get(&q.meter) else {
            return Err(ServiceError::BadRequest(format!(
                "unknown meter '{}': use one of {}",
                q.meter,
                meters.names().join(", ")
            )));
        };
        let at = q.time.unwrap_or_else(Utc::now);
        let price = plan.price(&q.meter, &q.project_id, &q.attributes, at, q.quantity);
        Ok(Quote {
            plan_id: plan.id.clone(),
            currency: plan.currency.code().to_string(),
            unit: def.unit.clone(),
            rule: price.rule.name(&q.meter).to_string(),
            price,
        })
    }

    /// Rates a range with a candidate plan, storing nothing, and compares it
    /// with the current lines per project and meter.
    pub async fn simulate(
        &self,
        candidate: PricePlan,
        window: RatingWindow,
    ) -> Result<Simulation, ServiceError> {
        let plan_id = candidate.id.clone();
        let request = self.request(window, Some(candidate)).await?;
        let (simulated, _) = runs::simulate(&self.db, &self.raw, &self.config, &request).await?;
        let mut current: runs::Totals = BTreeMap::new();
        runs::read_current_lines(&self.db, &self.rated, window.from, window.to, |l| {
            *current.entry((l.project_id, l.meter)).or_default() += l.amount;
        })
        .await?;
        let mut keys: Vec<&(String, String)> = current.keys().chain(simulated.keys()).collect();
        keys.sort();
        keys.dedup();
        let rows: Vec<SimulationRow> = keys
            .into_iter()
            .map(|k| {
                let c = current.get(k).copied().unwrap_or_default();
                let s = simulated.get(k).copied().unwrap_or_default();
                SimulationRow {
                    project_id: k.0.clone(),
                    meter: k.1.clone(),
                    current: c,
                    candidate: s,
                    difference: s - c,
                }
            })
            .collect();
        Ok(Simulation {
            plan_id,
            from: window.from,
            to: window.to,
            current_total: rows.iter().map(|r| r.current).sum(),
            candidate_total: rows.iter().map(|r| r.candidate).sum(),
            rows,
        })
    }
}
