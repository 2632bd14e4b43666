//! Rating endpoints: runs, rated lines, quotes, meter definitions and
//! price plans.
//!
//! `POST /v1/rating/runs` rates synchronously and answers with the run:
//! a month of a mid-size cloud rates in seconds, and a caller that wants
//! the lines next needs the run finished anyway.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_core::Currency;
use tally_rate::RatingService;
use tally_rate::plans::{self, ConfigError};
use tally_rate::service::{LineFilter, QuoteRequest, ServiceError};

use crate::{ApiError, AppState, Caller};

fn rating(state: &AppState) -> Result<&RatingService, ApiError> {
    state.rating.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rating_disabled",
            "rating is not configured in this process",
        )
    })
}

pub(crate) fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.0.role.can_write() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this needs an admin API key",
        ))
    }
}

fn service_error(e: ServiceError) -> ApiError {
    match e {
        ServiceError::Window(w) => ApiError::bad_request("invalid_range", w.to_string()),
        ServiceError::BadRequest(m) => ApiError::bad_request("invalid_request", m),
        ServiceError::Config(c) => config_error(c),
        ServiceError::Rating(r) => ApiError::internal(r),
    }
}

pub(crate) fn config_error(e: ConfigError) -> ApiError {
    match e {
        ConfigError::Document(d) => ApiError::bad_request("invalid_document", d.to_string()),
        ConfigError::NoPlan(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_plan",
            format!("no price plan '{id}'"),
        ),
        other => ApiError::internal(other),
    }
}

/// A run just made, with what billing did after it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunCreated {
    /// The run.
    #[serde(flatten)]
    pub run: tally_rate::runs::RatingRun,
    /// Prepaid drawdowns and budget alerts that followed it; absent when
    /// they failed (the run's lines are committed either way; see the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billing: Option<tally_bill::AfterRating>,
}

/// `GET /v1/rating/runs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunList {
    /// The latest runs first (at most 100).
    pub runs: Vec<tally_rate::runs::RatingRun>,
}

/// `GET /v1/meters`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MeterDocument {
    /// Each meter definition in force, in brief.
    pub meters: Vec<tally_rate::meters::MeterSummary>,
    /// The TOML document they were read from.
    pub document: String,
}

/// `PUT /v1/meters`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MeterNames {
    /// The names of the definitions now in force.
    pub meters: Vec<String>,
}

/// `GET /v1/plans`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanList {
    /// Every stored plan.
    pub plans: Vec<plans::StoredPlan>,
}

/// `POST /v1/plans`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AppliedPlan {
    /// The plan's id.
    pub plan_id: String,
    /// Its currency.
    pub currency: Currency,
    /// How many versions it has.
    pub versions: usize,
}

/// Body of `POST /v1/rating/runs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
    /// Rating period length (`1h`, `15m`, `1d`); default one hour.
    pub rating_period: Option<String>,
}

/// `POST /v1/rating/runs`: rate a range now.
#[utoipa::path(
    post,
    path = "/v1/rating/runs",
    tag = "rating",
    request_body = RunRequest,
    responses((status = 201, description = "The run, complete", body = RunCreated), crate::openapi::Refusals)
)]
pub async fn create_run(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let svc = rating(&state)?;
    let req: RunRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "expected {{\"from\": RFC 3339, \"to\": RFC 3339, \"rating_period\": \"1h\"}}: {e}"
            ),
        )
    })?;
    let period = req
        .rating_period
        .as_deref()
        .map(tally_rate::parse_duration)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_range", format!("rating_period: {e}")))?;
    let window = RatingService::window(req.from, req.to, period).map_err(service_error)?;
    // Records acknowledged a moment ago must be in the run.
    state.store.flush_now().await.map_err(ApiError::internal)?;
    let run = svc.rate(window).await.map_err(service_error)?;
    // Prepaid drawdowns and budget alerts follow every run; the lines are
    // committed either way, so a failure here is logged, not answered.
    let billing = match tally_bill::after_rating(&svc.db, &svc.rated, Utc::now()).await {
        Ok(after) => Some(after),
        Err(e) => {
            tracing::error!(error = %e, "drawdowns and budget checks after rating failed");
            None
        }
    };
    Ok((StatusCode::CREATED, Json(RunCreated { run, billing })).into_response())
}

/// `GET /v1/rating/runs`: recent runs.
#[utoipa::path(
    get,
    path = "/v1/rating/runs",
    tag = "rating",
    responses((status = 200, description = "Recent runs (operators only)", body = RunList), crate::openapi::Refusals)
)]
pub async fn list_runs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let svc = rating(&state)?;
    let runs = tally_rate::runs::list_runs(&svc.db, 100)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(RunList { runs }).into_response())
}

/// `GET /v1/rated-lines`: current lines the caller may see.
#[utoipa::path(
    get,
    path = "/v1/rated-lines",
    tag = "rating",
    params(tally_rate::service::LineFilter, crate::show::FormatParam),
    responses((status = 200, description = "A page of the current rated lines the caller may see (JSON), or CSV with format=csv", content((tally_rate::service::LinePage = "application/json"), (String = "text/csv"))), crate::openapi::Refusals)
)]
pub async fn list_lines(
    State(state): State<Arc<AppState>>,
    Caller(identity): Caller,
    Query(mut filter): Query<LineFilter>,
    Query(format): Query<crate::show::FormatParam>,
) -> Result<Response, ApiError> {
    let svc = rating(&state)?;
    filter.limit = Some(filter.limit.unwrap_or(1000).min(100_000));
    let csv = format.csv()?;
    let page = svc.lines(&identity, &filter).await.map_err(service_error)?;
    if csv {
        let mut body = Vec::new();
        let lines: Vec<_> = page.lines.into_iter().map(|l| l.line).collect();
        tally_show::csv_export::rated_lines(&lines, &mut body).map_err(crate::show::show_error)?;
        return Ok(crate::show::csv_response(body, "rated-lines.csv"));
    }
    Ok(Json(page).into_response())
}

/// `POST /v1/quote`: price a usage with the plan in force, storing nothing.
#[utoipa::path(
    post,
    path = "/v1/quote",
    tag = "rating",
    request_body = tally_rate::service::QuoteRequest,
    responses((status = 200, description = "The price of that usage with the plan in force", body = tally_rate::service::Quote), crate::openapi::Refusals)
)]
pub async fn quote(
    State(state): State<Arc<AppState>>,
    Caller(identity): Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let svc = rating(&state)?;
    let req: QuoteRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "expected {{\"meter\", \"quantity\" (decimal string), \"project_id\", \"attributes\", \"time\", \"plan_id\"}}: {e}"
            ),
        )
    })?;
    if !identity.may_read_project(&req.project_id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key may not quote for project '{}'", req.project_id),
        ));
    }
    let q = svc.quote(&req).await.map_err(service_error)?;
    Ok(Json(q).into_response())
}

/// `GET /v1/meters`: the meter definitions in force, as their document.
#[utoipa::path(
    get,
    path = "/v1/meters",
    tag = "rating",
    responses((status = 200, description = "The meter definitions in force", body = MeterDocument), crate::openapi::Refusals)
)]
pub async fn get_meters(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    let svc = rating(&state)?;
    let doc = plans::current_meters_document(&svc.db)
        .await
        .map_err(config_error)?;
    let set =
        tally_rate::MeterSet::from_toml(&doc).map_err(|e| ApiError::internal(e.to_string()))?;
    let meters = set.summaries();
    Ok(Json(MeterDocument {
        meters,
        document: doc,
    })
    .into_response())
}

/// `PUT /v1/meters`: replace the definitions (TOML body).
#[utoipa::path(
    put,
    path = "/v1/meters",
    tag = "rating",
    request_body(content = String, content_type = "application/toml", description = "A meter definitions document (TOML)"),
    responses((status = 200, description = "The definitions now in force", body = MeterNames), crate::openapi::Refusals)
)]
pub async fn put_meters(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: String,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let svc = rating(&state)?;
    let set = plans::replace_meters(&svc.db, &body)
        .await
        .map_err(config_error)?;
    Ok(Json(MeterNames {
        meters: set.names().into_iter().map(str::to_string).collect(),
    })
    .into_response())
}

/// `GET /v1/plans`: stored plans.
#[utoipa::path(
    get,
    path = "/v1/plans",
    tag = "plans",
    responses((status = 200, description = "Every stored plan", body = PlanList), crate::openapi::Refusals)
)]
pub async fn list_plans(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    let svc = rating(&state)?;
    let plans = plans::list_plans(&svc.db).await.map_err(config_error)?;
    Ok(Json(PlanList { plans }).into_response())
}

/// `GET /v1/plans/{id}`: a plan's versions and the rules the caller may
/// see (a rule limited to other tenants' projects is left out), each price
/// also in words.
#[utoipa::path(
    get,
    path = "/v1/plans/{id}",
    tag = "plans",
    params(("id" = String, Path, description = "The plan")),
    responses((status = 200, description = "The plan's versions and the rules the caller may see, in words", body = tally_show::plans::PlanView), crate::openapi::Refusals)
)]
pub async fn get_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let svc = rating(&state)?;
    match tally_show::plans::plan_view(&svc.db, &caller.0, &id)
        .await
        .map_err(crate::show::show_error)?
    {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no plan '{id}': list plans with GET /v1/plans"),
        )),
    }
}

/// Query of `POST /v1/plans`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApplyQuery {
    /// Make it the default plan.
    #[serde(default)]
    pub default: bool,
    /// `cloudkitty` to import a CloudKitty listing (JSON body).
    pub format: Option<String>,
    /// Plan id (CloudKitty imports).
    pub id: Option<String>,
    /// Currency (CloudKitty imports).
    pub currency: Option<String>,
}

/// `POST /v1/plans`: apply a plan (TOML body), or import a CloudKitty
/// listing with `?format=cloudkitty&id=..&currency=..`.
#[utoipa::path(
    post,
    path = "/v1/plans",
    tag = "plans",
    params(ApplyQuery),
    request_body(content = String, content_type = "application/toml", description = "A price plan (TOML), or a CloudKitty hashmap listing (JSON) with format=cloudkitty"),
    responses((status = 201, description = "The plan applied", body = AppliedPlan), crate::openapi::Refusals)
)]
pub async fn apply_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<ApplyQuery>,
    body: String,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let svc = rating(&state)?;
    let plan = match q.format.as_deref() {
        None | Some("toml") => plans::apply_plan(&svc.db, &body, q.default).await,
        Some("cloudkitty") => {
            let (Some(id), Some(currency)) = (q.id.as_deref(), q.currency.as_deref()) else {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "a CloudKitty import needs ?id=PLAN_ID&currency=ISO4217",
                ));
            };
            let currency: Currency = currency.parse().map_err(|e: tally_core::MoneyError| {
                ApiError::bad_request("invalid_request", e.to_string())
            })?;
            plans::import_cloudkitty(&svc.db, id, currency, &body, q.default).await
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("unknown format '{other}': use toml or cloudkitty"),
            ));
        }
    }
    .map_err(config_error)?;
    Ok((
        StatusCode::CREATED,
        Json(AppliedPlan {
            plan_id: plan.id,
            currency: plan.currency,
            versions: plan.versions.len(),
        }),
    )
        .into_response())
}
