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
use serde::{Deserialize, Serialize};
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(
    post,
    path = "/v1/accounts",
    tag = "accounts",
    request_body = NewAccount,
    responses((status = 201, description = "The account created", body = accounts::Account), crate::openapi::Refusals)
)]
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
#[utoipa::path(
    get,
    path = "/v1/accounts",
    tag = "accounts",
    responses((status = 200, description = "The accounts the caller may see", body = AccountList), crate::openapi::Refusals)
)]
pub async fn list_accounts(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let list = accounts::list_accounts(db, &AccountScope::of(&caller.0))
        .await
        .map_err(billing_error)?;
    Ok(Json(AccountList { accounts: list }).into_response())
}

/// `GET /v1/accounts/{id}`
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}",
    tag = "accounts",
    params(("id" = String, Path, description = "The billing account")),
    responses((status = 200, description = "The account", body = accounts::Account), crate::openapi::Refusals)
)]
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/projects",
    tag = "accounts",
    params(("id" = String, Path, description = "The billing account")),
    request_body = Ownership,
    responses((status = 200, description = "The account, now paying for the project", body = accounts::Account), crate::openapi::Refusals)
)]
pub async fn add_project(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Ownership>,
) -> Result<Response, ApiError> {
    own(&state, &caller, &id, Owned::Project, &body).await
}

/// `POST /v1/accounts/{id}/domains`
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/domains",
    tag = "accounts",
    params(("id" = String, Path, description = "The billing account")),
    request_body = Ownership,
    responses((status = 200, description = "The account, now paying for the domain's projects", body = accounts::Account), crate::openapi::Refusals)
)]
pub async fn add_domain(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Ownership>,
) -> Result<Response, ApiError> {
    own(&state, &caller, &id, Owned::Domain, &body).await
}

/// Body of `POST /v1/accounts/{id}/plan-assignments`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/plan-assignments",
    tag = "accounts",
    params(("id" = String, Path, description = "The billing account")),
    request_body = PlanAssignmentBody,
    responses((status = 200, description = "The account with its plan assignments", body = accounts::Account), crate::openapi::Refusals)
)]
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/coupons",
    tag = "accounts",
    params(("id" = String, Path, description = "The billing account")),
    request_body = CouponBody,
    responses((status = 201, description = "The coupon granted", body = Coupon), crate::openapi::Refusals)
)]
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpBody {
    /// Amount received.
    pub amount: Decimal,
    /// Payment reference.
    #[serde(default)]
    pub reference: String,
}

/// `POST /v1/accounts/{id}/top-ups`
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/top-ups",
    tag = "accounts",
    params(("id" = String, Path, description = "The billing account")),
    request_body = TopUpBody,
    responses((status = 200, description = "The balances after the top-up", body = ledger::Balances), crate::openapi::Refusals)
)]
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
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/balance",
    tag = "accounts",
    params(("id" = String, Path, description = "The billing account")),
    responses((status = 200, description = "Receivable and prepaid balances", body = ledger::Balances), crate::openapi::Refusals)
)]
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
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/ledger",
    tag = "accounts",
    params(("id" = String, Path, description = "The billing account")),
    responses((status = 200, description = "The account's ledger transactions", body = TransactionList), crate::openapi::Refusals)
)]
pub async fn account_ledger(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let txs = ledger::transactions(db, &AccountScope::of(&caller.0), &id)
        .await
        .map_err(billing_error)?;
    Ok(Json(TransactionList { transactions: txs }).into_response())
}

/// Body of `POST /v1/invoices/runs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceRunBody {
    /// The period (YYYY-MM).
    pub period: String,
    /// Only these accounts.
    #[serde(default)]
    pub accounts: Vec<String>,
}

/// `POST /v1/invoices/runs`: build or regenerate the period's drafts.
#[utoipa::path(
    post,
    path = "/v1/invoices/runs",
    tag = "invoices",
    request_body = InvoiceRunBody,
    responses((status = 200, description = "What the run did per account", body = invoices::RunSummary), crate::openapi::Refusals)
)]
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
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvoiceQuery {
    /// Only this account.
    pub account_id: Option<String>,
    /// Only this period.
    pub period: Option<String>,
    /// Only this status.
    pub status: Option<String>,
}

/// `GET /v1/invoices`
#[utoipa::path(
    get,
    path = "/v1/invoices",
    tag = "invoices",
    params(InvoiceQuery, crate::show::FormatParam),
    responses((status = 200, description = "The invoices (JSON), or CSV with format=csv", content((InvoiceList = "application/json"), (String = "text/csv"))), crate::openapi::Refusals)
)]
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
    Ok(Json(InvoiceList { invoices: list }).into_response())
}

/// `GET /v1/invoices/{id}`
#[utoipa::path(
    get,
    path = "/v1/invoices/{id}",
    tag = "invoices",
    params(("id" = String, Path, description = "The invoice")),
    responses((status = 200, description = "The invoice and its credit notes", body = invoices::StoredInvoice), crate::openapi::Refusals)
)]
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
#[utoipa::path(
    delete,
    path = "/v1/invoices/{id}",
    tag = "invoices",
    params(("id" = String, Path, description = "The invoice (drafts only)")),
    responses((status = 204, description = "The draft was deleted"), crate::openapi::Refusals)
)]
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
#[utoipa::path(
    post,
    path = "/v1/invoices/{id}/finalize",
    tag = "invoices",
    params(("id" = String, Path, description = "The draft invoice")),
    responses((status = 200, description = "The finalized invoice, numbered", body = invoices::StoredInvoice), crate::openapi::Refusals)
)]
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
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    /// Payment reference.
    #[serde(default)]
    pub reference: String,
}

/// `POST /v1/invoices/{id}/pay`
#[utoipa::path(
    post,
    path = "/v1/invoices/{id}/pay",
    tag = "invoices",
    params(("id" = String, Path, description = "The finalized invoice")),
    request_body = PayBody,
    responses((status = 200, description = "The paid invoice", body = invoices::StoredInvoice), crate::openapi::Refusals)
)]
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {
    /// Why.
    pub reason: String,
}

/// `POST /v1/invoices/{id}/void`
#[utoipa::path(
    post,
    path = "/v1/invoices/{id}/void",
    tag = "invoices",
    params(("id" = String, Path, description = "The finalized invoice")),
    request_body = VoidBody,
    responses((status = 200, description = "The voided invoice", body = invoices::StoredInvoice), crate::openapi::Refusals)
)]
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(
    post,
    path = "/v1/invoices/{id}/credit-notes",
    tag = "invoices",
    params(("id" = String, Path, description = "The finalized invoice")),
    request_body = CreditBody,
    responses((status = 201, description = "The credit note issued", body = invoices::CreditNote), crate::openapi::Refusals)
)]
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
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
}

/// `GET /v1/reports/unbilled`: operators only (it spans every project).
#[utoipa::path(
    get,
    path = "/v1/reports/unbilled",
    tag = "invoices",
    params(RangeQuery),
    responses((status = 200, description = "Rated usage no account pays for (operators only)", body = UnbilledList), crate::openapi::Refusals)
)]
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
    Ok(Json(UnbilledList { usage: rows }).into_response())
}

/// Body of `POST /v1/accounts/{id}/budgets`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/budgets",
    tag = "budgets",
    params(("id" = String, Path, description = "The billing account")),
    request_body = BudgetBody,
    responses((status = 201, description = "The budget", body = alerts::Budget), crate::openapi::Refusals)
)]
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
#[utoipa::path(
    get,
    path = "/v1/budgets",
    tag = "budgets",
    responses((status = 200, description = "The budgets the caller may see", body = BudgetList), crate::openapi::Refusals)
)]
pub async fn list_budgets(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let list = alerts::list_budgets(db, &AccountScope::of(&caller.0))
        .await
        .map_err(billing_error)?;
    Ok(Json(BudgetList { budgets: list }).into_response())
}

/// `GET /v1/alerts`
#[utoipa::path(
    get,
    path = "/v1/alerts",
    tag = "budgets",
    responses((status = 200, description = "Budget alerts the caller may see", body = AlertList), crate::openapi::Refusals)
)]
pub async fn list_alerts(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let db = &service(&state)?.db;
    let list = alerts::list_alerts(db, &AccountScope::of(&caller.0))
        .await
        .map_err(billing_error)?;
    Ok(Json(AlertList { alerts: list }).into_response())
}

/// Body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// http:// URL.
    pub url: String,
    /// Only this account's alerts.
    pub account_id: Option<String>,
}

/// `POST /v1/webhooks`: answers with the signing secret, shown once.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "budgets",
    request_body = WebhookBody,
    responses((status = 201, description = "The webhook, with its signing secret (shown once)", body = alerts::Webhook), crate::openapi::Refusals)
)]
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
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    tag = "budgets",
    responses((status = 200, description = "The webhook delivery log (operators only)", body = DeliveryList), crate::openapi::Refusals)
)]
pub async fn list_deliveries(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let db = &service(&state)?.db;
    let log = alerts::deliveries(db).await.map_err(billing_error)?;
    Ok(Json(DeliveryList { deliveries: log }).into_response())
}

/// `GET /v1/accounts`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountList {
    /// The accounts the caller may see.
    pub accounts: Vec<accounts::Account>,
}

/// `GET /v1/accounts/{id}/ledger`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransactionList {
    /// The account's ledger transactions, oldest first.
    pub transactions: Vec<ledger::PostedTransaction>,
}

/// `GET /v1/invoices` (JSON).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvoiceList {
    /// The invoices the caller may see, with their credit notes.
    pub invoices: Vec<invoices::StoredInvoice>,
}

/// `GET /v1/reports/unbilled`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnbilledList {
    /// Rated usage of projects no billing account pays for.
    pub usage: Vec<tally_bill::reports::UnbilledUsage>,
}

/// `GET /v1/budgets`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BudgetList {
    /// The budgets the caller may see.
    pub budgets: Vec<alerts::Budget>,
}

/// `GET /v1/alerts`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertList {
    /// Budget alerts raised, the caller's only.
    pub alerts: Vec<alerts::Alert>,
}

/// `GET /v1/webhooks/deliveries`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    /// Webhook deliveries, latest first.
    pub deliveries: Vec<alerts::Delivery>,
}
