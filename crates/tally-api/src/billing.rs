//! Billing endpoints: accounts, invoices, credit notes, balances and the
//! unbilled-usage report.
//!
//! Reads are scoped by the caller inside `tally-bill` (an account reader
//! sees its own account and invoices; a project reader sees none); every
//! change needs an admin key.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use tally_bill::accounts::{self, AccountSpec, Owned};
use tally_bill::invoices::{self, CreditRequest, InvoiceFilter};
use tally_bill::{AccountScope, BillingError, alerts, ledger, reports};
use tally_core::billing::{Coupon, PeriodLabel};
use tally_core::invoice::Discount;
use tally_rate::RatingService;

use crate::rating::require_admin;
use crate::{ApiError, AppState, Caller};

/// The billing database and rated lines, or 503 in a process without them.
pub fn billing_service(state: &AppState) -> Result<&RatingService, ApiError> {
    service(state)
}

fn service(state: &AppState) -> Result<&RatingService, ApiError> {
    state.rating.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "billing_disabled",
            "billing is not configured in this process",
        )
    })
}

/// Maps billing errors to answers: unknown things are 404, documents in
/// the wrong state 409, bad input 400; database failures are logged.
pub fn billing_error(e: BillingError) -> ApiError {
    let message = e.to_string();
    match e {
        BillingError::UnknownAccount(_) | BillingError::UnknownInvoice(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
        }
        BillingError::AccountExists(_) | BillingError::WrongStatus { .. } => {
            ApiError::new(StatusCode::CONFLICT, "conflict", message)
        }
        BillingError::Config(tally_rate::plans::ConfigError::NoPlan(_)) => {
            ApiError::new(StatusCode::NOT_FOUND, "no_such_plan", message)
        }
        BillingError::Database(_) | BillingError::Rating(_) | BillingError::Config(_) => {
            ApiError::internal(message)
        }
        BillingError::PeriodNotEnded { .. } | BillingError::NotRated { .. } => {
            ApiError::new(StatusCode::CONFLICT, "not_ready", message)
        }
        _ => ApiError::bad_request("invalid_request", message),
    }
}

fn period(text: &str) -> Result<PeriodLabel, ApiError> {
    text.parse()
        .map_err(|e: tally_core::billing::BillingError| {
            ApiError::bad_request("invalid_period", e.to_string())
        })
}

/// Body of `POST /v1/accounts`: the account and, optionally, what it owns
/// and its plan.
#[derive(Debug, Deserialize)]
pub struct NewAccount {
    /// The account.
    #[serde(flatten)]
    pub spec: AccountSpec,
    /// Projects it pays for.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Domains it pays for.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Its plan (from always).
    #[serde(default)]
    pub plan_id: Option<String>,
}

/// `POST /v1/accounts`
pub async fn create_account(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let Json(value) = body.map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))?;
    let new: NewAccount = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("invalid_account", e.to_string()))?;
    // Validate everything before the first write, so a bad body stores
    // nothing.
    new.spec.validate().map_err(billing_error)?;
    if let Some(plan) = &new.plan_id {
        tally_rate::plans::plan(db, plan)
            .await
            .map_err(|e| billing_error(e.into()))?;
    }
    accounts::create_account(db, &new.spec)
        .await
        .map_err(billing_error)?;
    let id = &new.spec.account_id;
    for p in &new.projects {
        accounts::own(db, id, Owned::Project, p)
            .await
            .map_err(billing_error)?;
    }
    for d in &new.domains {
        accounts::own(db, id, Owned::Domain, d)
            .await
            .map_err(billing_error)?;
    }
    if let Some(plan) = &new.plan_id {
        accounts::assign_plan(db, id, plan, DateTime::<Utc>::UNIX_EPOCH, None)
            .await
            .map_err(billing_error)?;
    }
    let account = accounts::get_account(db, &AccountScope::All, id)
        .await
        .map_err(billing_error)?;
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

/// `GET /v1/accounts`
pub async fn list_accounts(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let list = accounts::list_accounts(db, &AccountScope::of(&caller.0))
        .await
        .map_err(billing_error)?;
    Ok(Json(serde_json::json!({ "accounts": list })).into_response())
}

/// `GET /v1/accounts/{id}`
pub async fn get_account(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let a = accounts::get_account(db, &AccountScope::of(&caller.0), &id)
        .await
        .map_err(billing_error)?;
    Ok(Json(a).into_response())
}

/// Body of `POST /v1/accounts/{id}/projects` and `/domains`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ownership {
    /// The Keystone project or domain id.
    pub id: String,
}

async fn own(
    state: &AppState,
    caller: &Caller,
    account: &str,
    what: Owned,
    body: &Ownership,
) -> Result<Response, ApiError> {
    require_admin(caller)?;
    let db = &service(state)?.db;
    accounts::own(db, account, what, &body.id)
        .await
        .map_err(billing_error)?;
    let a = accounts::get_account(db, &AccountScope::All, account)
        .await
        .map_err(billing_error)?;
    Ok(Json(a).into_response())
}

/// `POST /v1/accounts/{id}/projects`
pub async fn add_project(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Ownership>,
) -> Result<Response, ApiError> {
    own(&state, &caller, &id, Owned::Project, &body).await
}

/// `POST /v1/accounts/{id}/domains`
pub async fn add_domain(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Ownership>,
) -> Result<Response, ApiError> {
    own(&state, &caller, &id, Owned::Domain, &body).await
}

/// Body of `POST /v1/accounts/{id}/plan-assignments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanAssignmentBody {
    /// The plan.
    pub plan_id: String,
    /// From when; default always.
    pub from: Option<DateTime<Utc>>,
    /// Until when (exclusive); default open-ended.
    pub to: Option<DateTime<Utc>>,
}

/// `POST /v1/accounts/{id}/plan-assignments`
pub async fn assign_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<PlanAssignmentBody>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let from = body.from.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    accounts::assign_plan(db, &id, &body.plan_id, from, body.to)
        .await
        .map_err(billing_error)?;
    let a = accounts::get_account(db, &AccountScope::All, &id)
        .await
        .map_err(billing_error)?;
    Ok(Json(a).into_response())
}

/// Body of `POST /v1/accounts/{id}/coupons`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponBody {
    /// Code.
    pub code: String,
    /// Percentage off.
    pub percent: Option<Decimal>,
    /// Fixed amount off.
    pub fixed: Option<Decimal>,
    /// First period (YYYY-MM).
    pub first_period: String,
    /// How many periods; default 1.
    pub periods: Option<u32>,
}

/// `POST /v1/accounts/{id}/coupons`
pub async fn grant_coupon(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CouponBody>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let discount = match (body.percent, body.fixed) {
        (Some(p), None) => Discount::Percent(p),
        (None, Some(f)) => Discount::Fixed(f),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_coupon",
                "give exactly one of 'percent' and 'fixed'",
            ));
        }
    };
    let coupon = Coupon {
        code: body.code,
        discount,
        first_period: period(&body.first_period)?,
        periods: body.periods.unwrap_or(1),
    };
    accounts::grant_coupon(db, &id, &coupon, Utc::now())
        .await
        .map_err(billing_error)?;
    Ok((StatusCode::CREATED, Json(coupon)).into_response())
}

/// Body of `POST /v1/accounts/{id}/top-ups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUpBody {
    /// Amount received.
    pub amount: Decimal,
    /// Payment reference.
    #[serde(default)]
    pub reference: String,
}

/// `POST /v1/accounts/{id}/top-ups`
pub async fn top_up(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<TopUpBody>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let b = ledger::top_up(db, &id, body.amount, &body.reference)
        .await
        .map_err(billing_error)?;
    Ok(Json(b).into_response())
}

/// `GET /v1/accounts/{id}/balance`
pub async fn balance(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let b = ledger::balances(db, &AccountScope::of(&caller.0), &id)
        .await
        .map_err(billing_error)?;
    Ok(Json(b).into_response())
}

/// `GET /v1/accounts/{id}/ledger`
pub async fn account_ledger(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let txs = ledger::transactions(db, &AccountScope::of(&caller.0), &id)
        .await
        .map_err(billing_error)?;
    Ok(Json(serde_json::json!({ "transactions": txs })).into_response())
}

/// Body of `POST /v1/invoices/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceRunBody {
    /// The period (YYYY-MM).
    pub period: String,
    /// Only these accounts.
    #[serde(default)]
    pub accounts: Vec<String>,
}

/// `POST /v1/invoices/runs`: build or regenerate the period's drafts.
pub async fn run_invoices(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<InvoiceRunBody>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let svc = service(&state)?;
    let only = (!body.accounts.is_empty()).then_some(body.accounts.as_slice());
    let summary = invoices::run_invoices(
        &svc.db,
        &svc.rated,
        &state.invoice_settings,
        period(&body.period)?,
        only,
        Utc::now(),
    )
    .await
    .map_err(billing_error)?;
    Ok(Json(summary).into_response())
}

/// Query of `GET /v1/invoices`.
#[derive(Debug, Deserialize)]
pub struct InvoiceQuery {
    /// Only this account.
    pub account_id: Option<String>,
    /// Only this period.
    pub period: Option<String>,
    /// Only this status.
    pub status: Option<String>,
}

/// `GET /v1/invoices`
pub async fn list_invoices(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<InvoiceQuery>,
    Query(format): Query<crate::show::FormatParam>,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let csv = format.csv()?;
    let filter = InvoiceFilter {
        account_id: q.account_id,
        period: q.period.as_deref().map(period).transpose()?,
        status: q.status,
        credited_between: None,
    };
    let list = invoices::list_invoices(db, &AccountScope::of(&caller.0), &filter)
        .await
        .map_err(billing_error)?;
    if csv {
        let mut body = Vec::new();
        tally_show::csv_export::invoices(&list, &mut body).map_err(crate::show::show_error)?;
        return Ok(crate::show::csv_response(body, "invoices.csv"));
    }
    Ok(Json(serde_json::json!({ "invoices": list })).into_response())
}

/// `GET /v1/invoices/{id}`
pub async fn get_invoice(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let i = invoices::get_invoice(db, &AccountScope::of(&caller.0), &id)
        .await
        .map_err(billing_error)?;
    Ok(Json(i).into_response())
}

/// `DELETE /v1/invoices/{id}`: drafts only.
pub async fn delete_invoice(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    invoices::delete_draft(db, &id)
        .await
        .map_err(billing_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/invoices/{id}/finalize`
pub async fn finalize(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let i = invoices::finalize(db, &id, Utc::now())
        .await
        .map_err(billing_error)?;
    Ok(Json(i).into_response())
}

/// Body of `POST /v1/invoices/{id}/pay`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    /// Payment reference.
    #[serde(default)]
    pub reference: String,
}

/// `POST /v1/invoices/{id}/pay`
pub async fn pay(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<PayBody>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let i = invoices::pay(db, &id, &body.reference, Utc::now())
        .await
        .map_err(billing_error)?;
    Ok(Json(i).into_response())
}

/// Body of `POST /v1/invoices/{id}/void`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {
    /// Why.
    pub reason: String,
}

/// `POST /v1/invoices/{id}/void`
pub async fn void(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<VoidBody>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let i = invoices::void(db, &id, &body.reason, Utc::now())
        .await
        .map_err(billing_error)?;
    Ok(Json(i).into_response())
}

/// Body of `POST /v1/invoices/{id}/credit-notes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditBody {
    /// One line (else the whole invoice).
    pub line_no: Option<u32>,
    /// Amount, tax included; default what remains.
    pub amount: Option<Decimal>,
    /// Why.
    pub reason: String,
}

/// `POST /v1/invoices/{id}/credit-notes`
pub async fn credit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreditBody>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let note = invoices::credit(
        db,
        &state.invoice_settings,
        &CreditRequest {
            invoice_id: id,
            line_no: body.line_no,
            amount: body.amount,
            reason: body.reason,
        },
        Utc::now(),
    )
    .await
    .map_err(billing_error)?;
    Ok((StatusCode::CREATED, Json(note)).into_response())
}

/// Query of `GET /v1/reports/unbilled`.
#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
}

/// `GET /v1/reports/unbilled`: operators only (it spans every project).
pub async fn unbilled(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<RangeQuery>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let svc = service(&state)?;
    let rows = reports::unbilled_usage(&svc.db, &svc.rated, q.from, q.to)
        .await
        .map_err(billing_error)?;
    Ok(Json(serde_json::json!({ "usage": rows })).into_response())
}

/// Body of `POST /v1/accounts/{id}/budgets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    /// Limit per period.
    pub amount: Decimal,
    /// One project of the account.
    pub project_id: Option<String>,
    /// Percentages; default 50, 80, 100.
    pub thresholds: Option<Vec<Decimal>>,
}

/// `POST /v1/accounts/{id}/budgets`
pub async fn create_budget(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<BudgetBody>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let thresholds = body
        .thresholds
        .unwrap_or_else(|| vec![Decimal::from(50), Decimal::from(80), Decimal::from(100)]);
    let b = alerts::create_budget(
        db,
        &id,
        body.project_id.as_deref(),
        body.amount,
        &thresholds,
    )
    .await
    .map_err(billing_error)?;
    Ok((StatusCode::CREATED, Json(b)).into_response())
}

/// `GET /v1/budgets`
pub async fn list_budgets(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let list = alerts::list_budgets(db, &AccountScope::of(&caller.0))
        .await
        .map_err(billing_error)?;
    Ok(Json(serde_json::json!({ "budgets": list })).into_response())
}

/// `GET /v1/alerts`
pub async fn list_alerts(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let list = alerts::list_alerts(db, &AccountScope::of(&caller.0))
        .await
        .map_err(billing_error)?;
    Ok(Json(serde_json::json!({ "alerts": list })).into_response())
}

/// Body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// http:// URL.
    pub url: String,
    /// Only this account's alerts.
    pub account_id: Option<String>,
}

/// `POST /v1/webhooks`: answers with the signing secret, shown once.
pub async fn create_webhook(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<WebhookBody>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let hook = alerts::create_webhook(db, &body.url, body.account_id.as_deref())
        .await
        .map_err(billing_error)?;
    Ok((StatusCode::CREATED, Json(hook)).into_response())
}

/// `GET /v1/webhooks/deliveries`: the delivery log (operators only).
pub async fn list_deliveries(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let log = alerts::deliveries(db).await.map_err(billing_error)?;
    Ok(Json(serde_json::json!({ "deliveries": log })).into_response())
}
