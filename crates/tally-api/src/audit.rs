//! The audit trail of the API: every write an admin key makes is recorded
//! with the state of its subject before and after (`tally_admin::audit`),
//! and `GET /v1/audit` lists it.
//!
//! It is one middleware rather than a line in each handler, so a new write
//! endpoint is audited without anyone remembering to. The subject is the
//! resource the path names (an account, an invoice, the meter definitions,
//! the plans); its state is read before and after the handler runs. Writes
//! that create something without such a subject (invoice runs, rating runs,
//! webhooks) record the answer as the state after. Usage ingest is data,
//! not an operator's change, and is not audited.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tally_admin::audit::{self, NewAuditEntry};
use tally_bill::AccountScope;
use tally_core::Role;

use crate::rating::require_admin;
use crate::{ApiError, AppState, Caller};

/// Largest answer kept as a state after, bytes.
const MAX_AFTER: usize = 256 * 1024;

fn audited(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && path.starts_with("/v1/")
        && path != "/v1/events"
        && path != "/v1/ceilometer/samples"
        && path != "/v1/quote"
}

/// The resource a write's path names, and how to read its state.
fn subject(path: &str) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "accounts", id, ..] => format!("account:{id}"),
        ["v1", "invoices", "runs"] => "invoice-run".into(),
        ["v1", "invoices", id, ..] => format!("invoice:{id}"),
        ["v1", "meters"] => "meters".into(),
        ["v1", "plans", ..] => "plans".into(),
        _ => path.to_string(),
    }
}

async fn state_of(state: &AppState, subject: &str) -> Option<serde_json::Value> {
    let svc = state.rating.as_ref()?;
    let all = AccountScope::All;
    if let Some(id) = subject.strip_prefix("account:") {
        let a = tally_bill::accounts::get_account(&svc.db, &all, id)
            .await
            .ok()?;
        return serde_json::to_value(a).ok();
    }
    if let Some(id) = subject.strip_prefix("invoice:") {
        let i = tally_bill::invoices::get_invoice(&svc.db, &all, id)
            .await
            .ok()?;
        return serde_json::to_value(i).ok();
    }
    match subject {
        "meters" => tally_rate::plans::current_meters_document(&svc.db)
            .await
            .ok()
            .map(serde_json::Value::String),
        "plans" => tally_rate::plans::list_plans(&svc.db)
            .await
            .ok()
            .and_then(|p| serde_json::to_value(p).ok()),
        _ => None,
    }
}

/// The middleware: records admin writes after they are answered.
pub async fn record_writes(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if !audited(&method, &path) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let principal = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(Caller(identity)) => {
            let admin = (identity.role == Role::Admin).then(|| identity.principal.clone());
            // The handler's own `Caller` reuses this identity.
            parts.extensions.insert(identity);
            match admin {
                Some(p) => p,
                None => return next.run(Request::from_parts(parts, body)).await,
            }
        }
        // Refused: the handler answers with the same refusal.
        Err(_) => return next.run(Request::from_parts(parts, body)).await,
    };
    let subject = subject(&path);
    let before = state_of(&state, &subject).await;
    let response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status();
    let (resp_parts, resp_body) = response.into_parts();
    let bytes = match axum::body::to_bytes(resp_body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    if status.is_success() {
        let after = match state_of(&state, &subject).await {
            Some(s) => Some(s),
            None if bytes.len() <= MAX_AFTER => serde_json::from_slice(&bytes).ok(),
            None => None,
        };
        let entry = NewAuditEntry {
            principal,
            action: format!("{method} {path} -> {}", status.as_u16()),
            subject,
            before,
            after,
        };
        if let Err(e) = audit::record(state.keys.pool(), &entry, chrono::Utc::now()).await {
            // The write happened; failing the answer now would invite a
            // retry that repeats it. The log says what was not audited.
            tracing::error!(error = %e, action = %entry.action, "could not record an audit entry");
        }
    }
    Response::from_parts(resp_parts, Body::from(bytes))
}

/// `GET /v1/audit?limit=&before=`: the newest entries first (admins only).
#[utoipa::path(
    get,
    operation_id = "list_audit",
    path = "/v1/audit",
    tag = "audit",
    params(("before" = Option<i64>, Query, description = "The next_before of the previous page"), ("limit" = Option<usize>, Query, description = "Page size")),
    responses((status = 200, description = "Audit entries, latest first", body = AuditPage), crate::openapi::Refusals)
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let number = |k: &str| -> Result<Option<i64>, ApiError> {
        params
            .get(k)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!("{k}: '{v}' is not a whole number"),
                    )
                })
            })
            .transpose()
    };
    let limit = number("limit")?.unwrap_or(100).clamp(1, 1000);
    let entries = audit::list(state.keys.pool(), limit, number("before")?)
        .await
        .map_err(ApiError::internal)?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.audit_id))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_before: next,
    })
    .into_response())
}

/// `GET /v1/audit`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// The entries, newest first.
    pub entries: Vec<audit::AuditEntry>,
    /// Ask again with `before` set to this for older entries; absent on
    /// the last page.
    pub next_before: Option<i64>,
}
