//! Summary and export endpoints: `GET /v1/costs`, `GET /v1/usage` and
//! `GET /v1/exports/focus`. The caller's scope is applied by
//! `tally-show` inside its queries.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use tally_core::billing::PeriodLabel;
use tally_show::ShowError;
use tally_show::focus::{self, ExportOptions};
use tally_show::summary::{self, Dimension, SummaryQuery};

use crate::billing::billing_service;
use crate::{ApiError, AppState, Caller};

/// Maps show errors to answers: bad requests are 400, the rest logged.
pub fn show_error(e: ShowError) -> ApiError {
    match e {
        ShowError::Invalid(m) => ApiError::bad_request("invalid_request", m),
        ShowError::Billing(e) => crate::billing::billing_error(e),
        other => ApiError::internal(other),
    }
}

fn bad(field: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_request", format!("{field}: {e}"))
}

/// The query parameters of `GET /v1/costs` and `GET /v1/usage`, for the
/// OpenAPI document. The handlers read the query as a map, because
/// attribute filters (`attr.flavor_name=m1.small`) have open names; each
/// field here is one of the fixed names [`summary_query`] accepts.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SummaryParams {
    /// Start (RFC 3339, inclusive).
    from: Option<String>,
    /// End (RFC 3339, exclusive).
    to: Option<String>,
    /// A month (YYYY-MM) instead of from and to.
    period: Option<String>,
    /// Comma-separated: account, project, service, meter, resource,
    /// attr.NAME.
    group_by: Option<String>,
    /// Time bucket: none, hour, day or month.
    bucket: Option<String>,
    /// Only this project.
    project_id: Option<String>,
    /// Only this billing account's projects.
    account_id: Option<String>,
    /// Only this service.
    service: Option<String>,
    /// Only this rated meter.
    meter: Option<String>,
    /// Only this resource.
    resource_id: Option<String>,
    /// Rows skipped first.
    offset: Option<usize>,
    /// Most rows answered.
    limit: Option<usize>,
}

/// Reads a summary query from the query string. Attribute filters are
/// `attr.NAME=VALUE`.
pub fn summary_query(
    params: &HashMap<String, String>,
    usage: bool,
) -> Result<SummaryQuery, ApiError> {
    let time = |k: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
        params
            .get(k)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.to_utc())
                    .map_err(|e| bad(k, format!("'{v}' is not an RFC 3339 instant ({e})")))
            })
            .transpose()
    };
    let number = |k: &str| -> Result<Option<usize>, ApiError> {
        params
            .get(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| bad(k, format!("'{v}' is not a whole number")))
            })
            .transpose()
    };
    let (mut from, mut to) = (time("from")?, time("to")?);
    if let Some(p) = params.get("period") {
        let label: PeriodLabel = p.parse().map_err(|e| bad("period", e))?;
        let month = tally_core::billing::BillingPeriod::new(label, 1, chrono_tz::Tz::UTC)
            .map_err(|e| bad("period", e))?;
        from = Some(month.start);
        to = Some(month.end);
    }
    let mut group_by = summary::parse_group_by(params.get("group_by").map_or("", String::as_str))
        .map_err(show_error)?;
    if usage && !group_by.contains(&Dimension::Meter) {
        group_by.push(Dimension::Meter);
    }
    let known = [
        "from",
        "to",
        "period",
        "group_by",
        "bucket",
        "project_id",
        "account_id",
        "service",
        "meter",
        "resource_id",
        "offset",
        "limit",
    ];
    let mut attributes = BTreeMap::new();
    for (k, v) in params {
        if let Some(name) = k.strip_prefix("attr.") {
            attributes.insert(name.to_string(), v.clone());
        } else if !known.contains(&k.as_str()) {
            return Err(bad(
                k,
                format!("unknown parameter; use {} or attr.NAME", known.join(", ")),
            ));
        }
    }
    Ok(SummaryQuery {
        from,
        to,
        group_by,
        bucket: params
            .get("bucket")
            .map(|b| b.parse())
            .transpose()
            .map_err(show_error)?
            .unwrap_or_default(),
        project_id: params.get("project_id").cloned(),
        account_id: params.get("account_id").cloned(),
        service: params.get("service").cloned(),
        meter: params.get("meter").cloned(),
        resource_id: params.get("resource_id").cloned(),
        attributes,
        offset: number("offset")?.unwrap_or(0),
        limit: number("limit")?,
    })
}

async fn summarize(
    state: &AppState,
    caller: &Caller,
    params: &HashMap<String, String>,
    usage: bool,
) -> Result<Response, ApiError> {
    let svc = billing_service(state)?;
    let query = summary_query(params, usage)?;
    let s = state
        .summaries
        .summarize(&svc.db, &svc.rated, &caller.0, &query, Utc::now())
        .await
        .map_err(show_error)?;
    Ok(Json(&*s).into_response())
}

/// `GET /v1/costs`: cost grouped by `group_by` and `bucket`.
#[utoipa::path(
    get,
    path = "/v1/costs",
    tag = "summaries",
    params(SummaryParams),
    responses((status = 200, description = "Cost (and quantity) per group and bucket", body = tally_show::summary::Summary), crate::openapi::Refusals)
)]
pub async fn costs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    summarize(&state, &caller, &params, false).await
}

/// `GET /v1/usage`: like costs, always per meter (quantities add up).
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "summaries",
    params(SummaryParams),
    responses((status = 200, description = "Quantity per meter, group and bucket", body = tally_show::summary::Summary), crate::openapi::Refusals)
)]
pub async fn usage(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    summarize(&state, &caller, &params, true).await
}

/// `GET /v1/explain?project_id=&resource_id=&meter=&at=`: the run, meter
/// definition, plan rule and raw records (with their original payloads)
/// behind the rated line(s) at those coordinates. 404 when there is none
/// the caller may see.
#[utoipa::path(
    get,
    path = "/v1/explain",
    tag = "explain",
    params(("line_id" = Option<String>, Query, description = "The line's id, as rated-line listings give it (instead of the four coordinates)"), ("project_id" = Option<String>, Query, description = "The project"), ("resource_id" = Option<String>, Query, description = "The resource"), ("meter" = Option<String>, Query, description = "The rated meter"), ("at" = Option<String>, Query, description = "An instant (RFC 3339) inside the line's period")),
    responses((status = 200, description = "The lines at those coordinates and everything behind them", body = ExplanationView), crate::openapi::Refusals)
)]
pub async fn explain(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let svc = billing_service(&state)?;
    let line = if let Some(id) = params.get("line_id") {
        let (project_id, resource_id, meter, at) =
            tally_core::parse_line_id(id).map_err(|e| bad("line_id", e))?;
        tally_show::explain::LineRef {
            project_id,
            resource_id,
            meter,
            at,
        }
    } else {
        coordinates(&params)?
    };
    let found = tally_show::explain::explain_line(
        &svc.db,
        &svc.rated,
        &state.store,
        &caller.0,
        &line,
        svc.config.carry_lookback,
    )
    .await
    .map_err(show_error)?;
    let Some(e) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no current rated line at those coordinates: list lines with GET /v1/rated-lines",
        ));
    };
    Ok(Json(ExplanationView::from(e)).into_response())
}

/// The line `GET /v1/explain` names by its four coordinates.
fn coordinates(params: &HashMap<String, String>) -> Result<tally_show::explain::LineRef, ApiError> {
    let field = |k: &str| {
        params.get(k).cloned().ok_or_else(|| {
            bad(
                k,
                "required: give line_id, or project_id, resource_id, meter and at",
            )
        })
    };
    let at_text = field("at")?;
    Ok(tally_show::explain::LineRef {
        project_id: field("project_id")?,
        resource_id: field("resource_id")?,
        meter: field("meter")?,
        at: DateTime::parse_from_rfc3339(&at_text)
            .map_err(|e| {
                bad(
                    "at",
                    format!("'{at_text}' is not an RFC 3339 instant ({e})"),
                )
            })?
            .to_utc(),
    })
}

/// `GET /v1/invoices/{id}/lines/{line_no}/explain`: the resources and
/// current rated lines behind an invoice line, and the plan rules that
/// priced them; each resource leads on to `GET /v1/explain`. 404 when the
/// caller may not see the invoice or it has no such line.
#[utoipa::path(
    get,
    path = "/v1/invoices/{id}/lines/{line_no}/explain",
    tag = "explain",
    params(("id" = String, Path, description = "The invoice"), ("line_no" = u32, Path, description = "The line number on the invoice")),
    responses((status = 200, description = "The resources and rated lines behind the invoice line", body = tally_show::explain::InvoiceLineExplanation), crate::openapi::Refusals)
)]
pub async fn explain_invoice_line(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    axum::extract::Path((id, line_no)): axum::extract::Path<(String, u32)>,
) -> Result<Response, ApiError> {
    let svc = billing_service(&state)?;
    let found =
        tally_show::explain::explain_invoice_line(&svc.db, &svc.rated, &caller.0, &id, line_no)
            .await
            .map_err(show_error)?;
    match found {
        Some(e) => Ok(Json(e).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no invoice '{id}' with a line {line_no}: list invoices with GET /v1/invoices"),
        )),
    }
}

/// An explanation as the API (and `tally explain`) shows it: raw records
/// in the same form as `GET /v1/events`, payloads included.
pub fn explanation_json(e: tally_show::explain::Explanation) -> serde_json::Value {
    serde_json::to_value(ExplanationView::from(e)).expect("explanations serialize")
}

/// An explanation as the API answers it: the raw records shown like
/// `GET /v1/events` shows them, payloads included.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ExplanationView {
    /// The lines, run, meter and rules.
    #[serde(flatten)]
    pub explanation: tally_show::explain::Explanation,
    /// The raw records behind the lines, latest first.
    pub records: Vec<crate::events::EventView>,
}

impl From<tally_show::explain::Explanation> for ExplanationView {
    fn from(mut explanation: tally_show::explain::Explanation) -> Self {
        let records = std::mem::take(&mut explanation.records)
            .into_iter()
            .map(crate::events::EventView::from)
            .collect();
        ExplanationView {
            explanation,
            records,
        }
    }
}

/// `GET /v1/invoices/{id}/pdf`: the invoice as a PDF document (scoped
/// like `GET /v1/invoices/{id}`).
#[utoipa::path(
    get,
    path = "/v1/invoices/{id}/pdf",
    tag = "invoices",
    params(("id" = String, Path, description = "The invoice")),
    responses((status = 200, description = "The invoice as a PDF", content_type = "application/pdf", body = Vec<u8>), crate::openapi::Refusals)
)]
pub async fn invoice_pdf(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let svc = billing_service(&state)?;
    let invoice =
        tally_bill::invoices::get_invoice(&svc.db, &tally_bill::AccountScope::of(&caller.0), &id)
            .await
            .map_err(crate::billing::billing_error)?;
    let body = tally_show::pdf::invoice_pdf(&invoice.document);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/pdf".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{id}.pdf\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// `GET /v1/exports/focus?period=YYYY-MM&format=csv|parquet`.
#[utoipa::path(
    get,
    path = "/v1/exports/focus",
    tag = "summaries",
    params(("period" = String, Query, description = "The billing period (YYYY-MM)"), ("format" = Option<String>, Query, description = "csv (default) or parquet"), ("include_drafts" = Option<bool>, Query, description = "Include draft invoices (operators)")),
    responses((status = 200, description = "FOCUS 1.2 rows of the period's invoices", content((String = "text/csv"), (Vec<u8> = "application/vnd.apache.parquet"))), crate::openapi::Refusals)
)]
pub async fn focus_export(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let svc = billing_service(&state)?;
    let period: PeriodLabel = params
        .get("period")
        .ok_or_else(|| bad("period", "required (YYYY-MM)"))?
        .parse()
        .map_err(|e| bad("period", e))?;
    let format = params.get("format").map_or("csv", String::as_str);
    let include_drafts = match params.get("include_drafts").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(bad(
                "include_drafts",
                format!("'{other}' is not true or false"),
            ));
        }
    };
    let rows = focus::period_rows(
        &svc.db,
        &svc.rated,
        &caller.0,
        period,
        ExportOptions { include_drafts },
    )
    .await
    .map_err(show_error)?;
    let mut body = Vec::new();
    let (content_type, ext) = match format {
        "csv" => {
            focus::write_csv(&rows, &mut body).map_err(show_error)?;
            ("text/csv; charset=utf-8", "csv")
        }
        "parquet" => {
            focus::write_parquet(&rows, &mut body).map_err(show_error)?;
            ("application/vnd.apache.parquet", "parquet")
        }
        other => return Err(bad("format", format!("'{other}' is not csv or parquet"))),
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"focus-{period}.{ext}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// `?format=json|csv` of list endpoints.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FormatParam {
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

impl FormatParam {
    /// Whether CSV was asked for; an unknown format is a 400.
    pub fn csv(&self) -> Result<bool, ApiError> {
        match self.format.as_deref() {
            None | Some("json") => Ok(false),
            Some("csv") => Ok(true),
            Some(other) => Err(bad("format", format!("'{other}' is not json or csv"))),
        }
    }
}

/// A CSV answer.
pub fn csv_response(body: Vec<u8>, filename: &str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}
