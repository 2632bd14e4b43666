//! The API's OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` attributes and the answer types' schemas, served at
//! `GET /v1/openapi.json`.
//!
//! The document is also what keeps the API honest: with
//! [`ResponseCheck`] on (`TALLY_CHECK_RESPONSES=1`, as the tests run the
//! server), every JSON answer is validated against the schema its
//! operation declares, and one that does not match is replaced by a 500
//! naming the mismatch, so no test can pass over a drifted document.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{ApiError, AppState};

/// The refusals every endpoint may answer with, each an [`ApiError`] body
/// with a stable `code`.
pub struct Refusals;

impl utoipa::IntoResponses for Refusals {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ApiError")))
                        .build(),
                )
                .build()
                .into()
        };
        [
            ("400", "The request is invalid: the message names what to fix"),
            ("401", "No valid API key"),
            (
                "403",
                "The key's role may not do this (readers never write)",
            ),
            (
                "404",
                "Not found, or outside the caller's scope (the same answer, so existence does not leak)",
            ),
            ("405", "The path exists, the method does not"),
            ("409", "The object is not in a state that allows this"),
            ("413", "The body is larger than the server accepts"),
            ("415", "The body's content type is not one this operation reads"),
            (
                "422",
                "The body is well-formed but a field is missing or has the wrong type",
            ),
            ("500", "An internal error; the server log has the details"),
            ("503", "The part of Tally this needs is not configured"),
        ]
        .into_iter()
        .map(|(status, description)| (status.to_string(), error(description)))
        .collect()
    }
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                utoipa::openapi::security::HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("Tally API key")
                    .description(Some(
                        "An API key (`tally admin key create`) as `Authorization: Bearer <key>`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

/// `AccountSpec` refuses unknown fields where it is read alone, but it is
/// flattened into `NewAccount` and `Account`, whose other fields sit beside
/// its own: as a part of those, its schema must not forbid them.
struct FlattenedParts;

impl Modify for FlattenedParts {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for name in ["AccountSpec"] {
            if let Some(RefOr::T(utoipa::openapi::schema::Schema::Object(o))) =
                components.schemas.get_mut(name)
            {
                o.additional_properties = None;
            }
        }
    }
}

/// The document's source: every API operation.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally",
        description = "Metering, rating and billing of OpenStack clouds. Every query is scoped by the caller's API key: an admin sees everything, an account reader one billing account and its projects, a project reader one project. Amounts and quantities are exact decimals written as strings.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::healthz,
        crate::metrics_text,
        crate::ingest_status,
        openapi_json,
        crate::events::list,
        crate::ingest::post_events,
        crate::ingest::post_ceilometer_samples,
        crate::rating::create_run,
        crate::rating::list_runs,
        crate::rating::list_lines,
        crate::rating::quote,
        crate::rating::get_meters,
        crate::rating::put_meters,
        crate::rating::list_plans,
        crate::rating::get_plan,
        crate::rating::apply_plan,
        crate::billing::create_account,
        crate::billing::list_accounts,
        crate::billing::get_account,
        crate::billing::add_project,
        crate::billing::add_domain,
        crate::billing::assign_plan,
        crate::billing::grant_coupon,
        crate::billing::top_up,
        crate::billing::balance,
        crate::billing::account_ledger,
        crate::billing::run_invoices,
        crate::billing::list_invoices,
        crate::billing::get_invoice,
        crate::billing::delete_invoice,
        crate::billing::finalize,
        crate::billing::pay,
        crate::billing::void,
        crate::billing::credit,
        crate::billing::unbilled,
        crate::billing::create_budget,
        crate::billing::list_budgets,
        crate::billing::list_alerts,
        crate::billing::create_webhook,
        crate::billing::list_deliveries,
        crate::show::costs,
        crate::show::usage,
        crate::show::explain,
        crate::show::explain_invoice_line,
        crate::show::invoice_pdf,
        crate::show::focus_export,
        crate::audit::list,
    ),
    components(schemas(ApiError)),
    modifiers(&Security, &FlattenedParts),
    security(("api_key" = [])),
    tags(
        (name = "ingest", description = "Usage in: CloudEvents, OpenStack notifications, Ceilometer samples"),
        (name = "events", description = "Raw records as received"),
        (name = "rating", description = "Rating runs, rated lines, meters and quotes"),
        (name = "plans", description = "Price plans"),
        (name = "accounts", description = "Billing accounts, balances and the ledger"),
        (name = "invoices", description = "Invoices, credit notes and PDFs"),
        (name = "budgets", description = "Budgets, alerts and webhooks"),
        (name = "summaries", description = "Usage and cost summaries, FOCUS export"),
        (name = "explain", description = "What is behind a rated line or an invoice line"),
        (name = "audit", description = "Who changed what"),
        (name = "health", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// `GET /v1/openapi.json`: the API's OpenAPI 3.1 document (no key needed).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "health",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)),
    security(())
)]
pub async fn openapi_json() -> Response {
    axum::Json(document()).into_response()
}

/// Validates JSON answers against the document (see the module's doc).
pub struct ResponseCheck {
    /// Per (method, path template, status): the answer's schema, ready.
    validators: HashMap<(Method, String, u16), jsonschema::Validator>,
}

impl ResponseCheck {
    /// Compiles a validator for every JSON answer the document declares.
    pub fn new() -> Result<ResponseCheck, String> {
        let doc = serde_json::to_value(document()).map_err(|e| e.to_string())?;
        let components = doc.get("components").cloned().unwrap_or_default();
        let mut validators = HashMap::new();
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, operation) in item {
                let Ok(method) = method.to_uppercase().parse::<Method>() else {
                    continue;
                };
                let responses = operation["responses"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for (status, response) in responses {
                    let Ok(status) = status.parse::<u16>() else {
                        continue;
                    };
                    let Some(schema) = response
                        .pointer("/content/application~1json/schema")
                        .cloned()
                    else {
                        continue;
                    };
                    // The schema's `$ref`s point into the document's
                    // components: give the schema those as its own root.
                    let mut root = serde_json::json!({
                        "$schema": "https://json-schema.org/draft/2020-12/schema",
                        "components": components,
                    });
                    root["allOf"] = serde_json::json!([schema]);
                    let validator = jsonschema::options()
                        .should_validate_formats(true)
                        .build(&root)
                        .map_err(|e| format!("{method} {path} {status}: {e}"))?;
                    validators.insert((method.clone(), path.clone(), status), validator);
                }
            }
        }
        Ok(ResponseCheck { validators })
    }

    /// What is wrong with `body`, answered by `method path` with `status`,
    /// if anything; an answer the document does not declare is wrong too.
    pub fn problem(
        &self,
        method: &Method,
        path: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> Option<String> {
        let Some(validator) = self
            .validators
            .get(&(method.clone(), path.to_string(), status))
        else {
            return Some(format!(
                "{method} {path} answered {status} with JSON, which its OpenAPI operation does not declare"
            ));
        };
        let errors: Vec<String> = validator
            .iter_errors(body)
            .take(5)
            .map(|e| format!("at '{}': {e}", e.instance_path()))
            .collect();
        (!errors.is_empty()).then(|| {
            format!(
                "{method} {path} {status} does not match its OpenAPI schema: {}",
                errors.join("; ")
            )
        })
    }
}

/// Middleware: with a [`ResponseCheck`] in the state, replaces an answer
/// that does not match the document by a 500 that says why.
pub async fn check_responses(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(check) = state.response_check.clone() else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let response = next.run(request).await;
    let Some(template) = template.filter(|t| t.starts_with("/v1/") || t == "/healthz") else {
        return response;
    };
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return response;
    }
    let status = response.status();
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let problem = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(value) => check.problem(&method, &template, status.as_u16(), &value),
        Err(e) => Some(format!("{method} {template} answered invalid JSON: {e}")),
    };
    match problem {
        Some(problem) => {
            tracing::error!(%problem, "an answer does not match the OpenAPI document");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "response_schema_mismatch",
                problem,
            )
            .into_response()
        }
        None => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}
