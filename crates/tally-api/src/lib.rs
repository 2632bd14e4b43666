//! Tally's HTTP API: the ingest endpoint of the collect module and the first
//! endpoints of the show module (raw records, health, metrics).
//!
//! Handlers stay thin: they authenticate the caller into an
//! [`tally_core::Identity`], parse the request, and hand both to the data
//! layer, which applies the caller's scope itself. Every error is JSON
//! `{"code": ..., "message": ...}` with a stable code.

pub mod audit;
pub mod billing;
pub mod error;
pub mod events;
pub mod ingest;
pub mod openapi;
pub mod rating;
pub mod show;
pub mod ui;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tally_admin::ApiKeys;
use tally_core::Identity;
use tally_store::RawStore;

pub use error::ApiError;

/// Limits of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Most records in one ingest request.
    pub max_batch_records: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: 16 << 20,
            max_batch_records: 100_000,
        }
    }
}

/// What every handler can reach.
pub struct AppState {
    /// The raw usage store.
    pub store: RawStore,
    /// API keys, for authentication.
    pub keys: ApiKeys,
    /// Request limits.
    pub limits: ApiLimits,
    /// The Prometheus recorder's handle, when metrics are on.
    pub metrics: Option<PrometheusHandle>,
    /// When the server started.
    pub started: Instant,
    /// Rating, plans and lines; `None` in processes that only ingest.
    /// Billing uses its database and rated lines too.
    pub rating: Option<tally_rate::RatingService>,
    /// The seller and number series printed on invoices.
    pub invoice_settings: tally_bill::invoices::InvoiceSettings,
    /// Signed-in dashboard sessions.
    pub sessions: ui::Sessions,
    /// Summary answers remembered for the API and the dashboard.
    pub summaries: tally_show::summary_cache::SummaryCache,
    /// When set, JSON answers are checked against the OpenAPI document.
    pub response_check: Option<Arc<openapi::ResponseCheck>>,
}

/// Builds the router with every route.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(ui::root))
        .route("/ui", get(ui::overview))
        .route("/ui/login", get(ui::login_form).post(ui::login))
        .route("/ui/logout", post(ui::logout))
        .route("/ui/invoices", get(ui::invoices))
        .route("/ui/invoices/{id}", get(ui::pages::invoice))
        .route("/ui/invoices/{id}/pdf", get(ui::invoice_pdf))
        .route(
            "/ui/invoices/{id}/lines/{line_no}",
            get(ui::pages::invoice_line),
        )
        .route("/ui/accounts", get(ui::pages::accounts))
        .route("/ui/accounts/{id}", get(ui::pages::account))
        .route("/ui/projects/{id}", get(ui::pages::project))
        .route("/ui/plans", get(ui::pages::plans))
        .route("/ui/explain", get(ui::pages::explain))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/events", get(events::list).post(ingest::post_events))
        .route(
            "/v1/ceilometer/samples",
            post(ingest::post_ceilometer_samples),
        )
        .route(
            "/v1/rating/runs",
            get(rating::list_runs).post(rating::create_run),
        )
        .route("/v1/rated-lines", get(rating::list_lines))
        .route("/v1/quote", post(rating::quote))
        .route(
            "/v1/meters",
            get(rating::get_meters).put(rating::put_meters),
        )
        .route(
            "/v1/plans",
            get(rating::list_plans).post(rating::apply_plan),
        )
        .route("/v1/plans/{id}", get(rating::get_plan))
        .route(
            "/v1/accounts",
            get(billing::list_accounts).post(billing::create_account),
        )
        .route("/v1/accounts/{id}", get(billing::get_account))
        .route("/v1/accounts/{id}/projects", post(billing::add_project))
        .route("/v1/accounts/{id}/domains", post(billing::add_domain))
        .route(
            "/v1/accounts/{id}/plan-assignments",
            post(billing::assign_plan),
        )
        .route("/v1/accounts/{id}/coupons", post(billing::grant_coupon))
        .route("/v1/accounts/{id}/top-ups", post(billing::top_up))
        .route("/v1/accounts/{id}/balance", get(billing::balance))
        .route("/v1/accounts/{id}/ledger", get(billing::account_ledger))
        .route("/v1/invoices", get(billing::list_invoices))
        .route("/v1/invoices/runs", post(billing::run_invoices))
        .route(
            "/v1/invoices/{id}",
            get(billing::get_invoice).delete(billing::delete_invoice),
        )
        .route("/v1/invoices/{id}/finalize", post(billing::finalize))
        .route("/v1/invoices/{id}/pay", post(billing::pay))
        .route("/v1/invoices/{id}/void", post(billing::void))
        .route("/v1/invoices/{id}/credit-notes", post(billing::credit))
        .route("/v1/reports/unbilled", get(billing::unbilled))
        .route("/v1/accounts/{id}/budgets", post(billing::create_budget))
        .route("/v1/budgets", get(billing::list_budgets))
        .route("/v1/alerts", get(billing::list_alerts))
        .route("/v1/webhooks", post(billing::create_webhook))
        .route("/v1/webhooks/deliveries", get(billing::list_deliveries))
        .route("/v1/costs", get(show::costs))
        .route("/v1/usage", get(show::usage))
        .route("/v1/exports/focus", get(show::focus_export))
        .route("/v1/invoices/{id}/pdf", get(show::invoice_pdf))
        .route("/v1/explain", get(show::explain))
        .route(
            "/v1/invoices/{id}/lines/{line_no}/explain",
            get(show::explain_invoice_line),
        )
        .route("/v1/audit", get(audit::list))
        .route("/v1/ingest/status", get(ingest_status))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint: see the README for the API",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record_writes,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            openapi::check_responses,
        ))
        .with_state(state)
}

/// Turns the plain-text refusals of axum's extractors (a query string or
/// body that does not parse) into the API's JSON errors, so every error
/// has a stable code whatever produced it.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !(status.is_client_error() && is_text) {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let code = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        _ => "invalid_request",
    };
    ApiError::new(status, code, text).into_response()
}

/// The authenticated caller of a request.
pub struct Caller(pub Identity);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // A middleware that already authenticated the request (the audit
        // trail) left the identity here: one key lookup per request.
        if let Some(identity) = parts.extensions.get::<Identity>() {
            return Ok(Caller(identity.clone()));
        }
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| {
                unauthorized("missing 'Authorization: Bearer <API key>' header; the first admin key is in <data-dir>/admin-key")
            })?
            .to_str()
            .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
        // Ceilometer's http publisher can only send credentials from the
        // URL's userinfo, as Basic auth: the password is the API key.
        let basic = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
            .map(|b64| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64.trim())
                    .ok()
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .and_then(|pair| pair.split_once(':').map(|(_, key)| key.to_string()))
                    .ok_or_else(|| {
                        unauthorized("the Basic credentials are not base64 of 'user:<API key>'")
                    })
            })
            .transpose()?;
        let key = match &basic {
            Some(k) => k.as_str(),
            None => header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .ok_or_else(|| {
                    unauthorized("the Authorization header must be 'Bearer <API key>' (or Basic with the key as password)")
                })?
                .trim(),
        };
        match state.keys.authenticate(key).await {
            Ok(Some(identity)) => Ok(Caller(identity)),
            Ok(None) => Err(unauthorized("the API key is unknown or revoked")),
            Err(e) => Err(ApiError::internal(e)),
        }
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Ready", body = Health), (status = 503, description = "Not ready", body = Health), crate::openapi::Refusals),
    security(())
)]
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.store.stats().await.ok();
    let body = |status: &'static str, problem: Option<String>| Health {
        status,
        problem,
        uptime_seconds: state.started.elapsed().as_secs(),
        store: stats.clone(),
    };
    match state.store.health() {
        Ok(()) => (StatusCode::OK, axum::Json(body("ok", None))).into_response(),
        Err(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(body("failing", Some(problem))),
        )
            .into_response(),
    }
}

/// `GET /v1/ingest/status` (admins): records accepted, duplicate,
/// rejected, ignored and dead-lettered since the process started, when a
/// record was last accepted, and the store's flush backlog and lag.
#[utoipa::path(
    get,
    path = "/v1/ingest/status",
    tag = "ingest",
    responses((status = 200, description = "Accepted, rejected and dead-lettered counts, and lag", body = IngestStatus), crate::openapi::Refusals)
)]
async fn ingest_status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    rating::require_admin(&caller)?;
    let counts = state.store.counters().snapshot();
    let stats = state.store.stats().await.map_err(ApiError::internal)?;
    let idle = counts
        .last_accepted_at
        .map(|t| (chrono::Utc::now() - t).num_milliseconds() as f64 / 1000.0);
    Ok(axum::Json(IngestStatus {
        counts,
        seconds_since_last_accepted: idle,
        unflushed_records: stats.unflushed_records,
        flush_lag_seconds: stats.flush_lag_seconds,
        segments: stats.catalog.segments,
        stored_records: stats.catalog.records,
    })
    .into_response())
}

/// `GET /healthz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `failing`.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// What is failing, when something is.
    pub problem: Option<String>,
    /// Seconds since the process started.
    pub uptime_seconds: u64,
    /// The raw store's figures, when they could be read.
    pub store: Option<tally_store::StoreStats>,
}

/// `GET /v1/ingest/status`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct IngestStatus {
    /// Records by outcome since the process started.
    pub counts: tally_store::counters::IngestCounts,
    /// Seconds since a record was last accepted; absent before the first.
    pub seconds_since_last_accepted: Option<f64>,
    /// Acknowledged records not yet in Parquet segments.
    pub unflushed_records: u64,
    /// Age of the oldest of those, seconds.
    pub flush_lag_seconds: f64,
    /// Active raw store segments.
    pub segments: i64,
    /// Records in them.
    pub stored_records: i64,
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus metrics", content_type = "text/plain", body = String), crate::openapi::Refusals),
    security(())
)]
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "metrics are not enabled in this process",
        )
        .into_response(),
    }
}
