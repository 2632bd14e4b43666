//! `GET /v1/events`: raw records, each with its original payload.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_core::{Attributes, UsageRecord};
use tally_store::{EventFilter, QueryCursor, StoreError};

use crate::{ApiError, AppState, Caller};

/// Largest page a client may ask for.
pub const MAX_PAGE: usize = 1000;

/// One raw record as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    id: String,
    source: String,
    time: String,
    received_at: String,
    project_id: String,
    user_id: Option<String>,
    domain_id: Option<String>,
    resource_id: String,
    meter: String,
    kind: &'static str,
    /// A decimal string: JSON numbers would lose exactness in many clients.
    volume: String,
    unit: Option<String>,
    attributes: Attributes,
    /// The record as received: text when it is UTF-8, else base64.
    payload: String,
    payload_encoding: &'static str,
}

impl From<UsageRecord> for EventView {
    fn from(r: UsageRecord) -> Self {
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let (payload, payload_encoding) = match std::str::from_utf8(&r.payload) {
            Ok(s) => (s.to_string(), "utf8"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&r.payload),
                "base64",
            ),
        };
        EventView {
            id: r.id,
            source: r.source,
            time: ts(r.time),
            received_at: ts(r.received_at),
            project_id: r.project_id,
            user_id: r.user_id,
            domain_id: r.domain_id,
            resource_id: r.resource_id,
            meter: r.meter,
            kind: r.kind.as_str(),
            volume: r.volume.to_string(),
            unit: r.unit,
            attributes: r.attributes,
            payload,
            payload_encoding,
        }
    }
}

/// A page of records.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventList {
    events: Vec<EventView>,
    next_cursor: Option<String>,
}

impl EventList {
    /// The API's view of a page of records.
    pub fn new(records: Vec<UsageRecord>, next: Option<&QueryCursor>) -> EventList {
        EventList {
            events: records.into_iter().map(EventView::from).collect(),
            next_cursor: next.map(QueryCursor::encode),
        }
    }
}

fn parse_time(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    params
        .get(name)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("'{name}' must be an RFC 3339 time with an offset, such as 2026-10-01T00:00:00Z; got '{v}'"),
                    )
                })
        })
        .transpose()
}

/// Lists raw records visible to the caller, filtered by `project_id`,
/// `resource_id`, `meter`, `from` and `to`, `limit` per page, continued
/// with `cursor`.
#[utoipa::path(
    get,
    operation_id = "list_events",
    path = "/v1/events",
    tag = "events",
    params(("project_id" = Option<String>, Query, description = "Only this project"), ("resource_id" = Option<String>, Query, description = "Only this resource"), ("meter" = Option<String>, Query, description = "Only this raw meter"), ("from" = Option<String>, Query, description = "Event time from (RFC 3339)"), ("to" = Option<String>, Query, description = "Event time before (RFC 3339)"), ("limit" = Option<usize>, Query, description = "Page size (at most 1000)"), ("cursor" = Option<String>, Query, description = "The next_cursor of the previous page")),
    responses((status = 200, description = "A page of raw records, each with its original payload", body = EventList), crate::openapi::Refusals)
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<EventList>, ApiError> {
    const KNOWN: &[&str] = &[
        "project_id",
        "resource_id",
        "meter",
        "from",
        "to",
        "cursor",
        "limit",
    ];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "unknown query parameter '{unknown}': use {}",
                KNOWN.join(", ")
            ),
        ));
    }
    let limit = match params.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("'limit' must be a whole number from 1 to {MAX_PAGE}; got '{v}'"),
                )
            })?,
    };
    let filter = EventFilter {
        project_id: params.get("project_id").cloned(),
        resource_id: params.get("resource_id").cloned(),
        meter: params.get("meter").cloned(),
        from: parse_time(&params, "from")?,
        to: parse_time(&params, "to")?,
    };
    let cursor = params
        .get("cursor")
        .map(|c| QueryCursor::decode(c))
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_cursor", e.to_string()))?;
    let page = state
        .store
        .query(&caller, &filter, cursor.as_ref(), limit)
        .await
        .map_err(|e| match e {
            StoreError::BadCursor => ApiError::bad_request("invalid_cursor", e.to_string()),
            other => ApiError::internal(other),
        })?;
    Ok(Json(EventList::new(page.records, page.next.as_ref())))
}
