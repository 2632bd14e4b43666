//! `POST /v1/events`: usage in, durable before the answer.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use chrono::{SubsecRound, Utc};
use std::collections::HashMap;
use tally_collect::{FORMATS, Framing, decode_body, decoder_for};
use tally_core::IngestSummary;
use tally_store::StoreError;

use crate::{ApiError, AppState, Caller};

/// Bodies above this are decoded on the blocking pool, off the async workers.
const INLINE_DECODE_BYTES: usize = 256 * 1024;

/// Accepts CloudEvents (single, batch or NDJSON) and answers with counts
/// and one rejection per bad record, only after accepted records are durable.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "ingest",
    params(("format" = Option<String>, Query, description = "cloudevents (default) or openstack")),
    request_body(content((serde_json::Value = "application/cloudevents-batch+json"), (serde_json::Value = "application/cloudevents+json"), (serde_json::Value = "application/json"), (String = "application/x-ndjson")), description = "CloudEvents (one, a batch, or NDJSON), or OpenStack notifications and Ceilometer samples with format=openstack"),
    responses((status = 200, description = "Counts and one rejection per bad record; accepted records are durable", body = tally_core::IngestSummary), crate::openapi::Refusals)
)]
pub async fn post_events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestSummary>, ApiError> {
    let format = params.get("format").map_or("cloudevents", String::as_str);
    ingest(&state, caller, format, &headers, body).await
}

/// `POST /v1/ceilometer/samples`: exactly what Ceilometer's `http://`
/// publisher sends (a sample or a JSON array of samples, as
/// `application/json`), authenticated by a Tally key in the URL's userinfo
/// (`http://tally:<key>@host:8080/v1/ceilometer/samples`), which arrives as
/// HTTP Basic auth.
#[utoipa::path(
    post,
    path = "/v1/ceilometer/samples",
    tag = "ingest",
    request_body(content = serde_json::Value, content_type = "application/json", description = "What Ceilometer's http:// publisher sends: one sample or an array"),
    responses((status = 200, description = "Counts and one rejection per bad sample", body = tally_core::IngestSummary), crate::openapi::Refusals),
    security(("api_key" = []), ("basic" = []))
)]
pub async fn post_ceilometer_samples(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestSummary>, ApiError> {
    ingest(&state, caller, "openstack", &headers, body).await
}

async fn ingest(
    state: &AppState,
    Caller(caller): Caller,
    format: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json<IngestSummary>, ApiError> {
    let refuse = |e: ApiError| {
        metrics::counter!("tally_ingest_requests_refused_total", "code" => e.code).increment(1);
        e
    };
    if !caller.role.can_write() {
        return Err(refuse(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a {} key cannot ingest usage: use an admin key",
                caller.role.name()
            ),
        )));
    }
    let decoder = decoder_for(format).ok_or_else(|| {
        refuse(ApiError::bad_request(
            "unknown_format",
            format!(
                "unknown format '{format}': use one of {}",
                FORMATS.join(", ")
            ),
        ))
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let framing = Framing::from_content_type(content_type).ok_or_else(|| {
        refuse(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type '{content_type}' is not accepted: use application/cloudevents+json (one event), application/cloudevents-batch+json (a JSON array) or application/x-ndjson (one event per line)"
            ),
        ))
    })?;
    let limit = state.limits.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body is larger than the limit of {limit} bytes (ingest.max_body_bytes): split it into smaller batches"
            ),
        )
    };
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared_len.is_some_and(|len| len > limit) {
        return Err(refuse(too_large()));
    }
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let is_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        refuse(if is_limit {
            too_large()
        } else {
            ApiError::bad_request("unreadable_body", format!("could not read the body: {e}"))
        })
    })?;

    let received_at = Utc::now().trunc_subsecs(6);
    let max_records = state.limits.max_batch_records;
    let decode = move || decode_body(decoder.as_ref(), framing, &bytes, received_at);
    let (decoded, elements) = if declared_len.is_some_and(|n| n <= INLINE_DECODE_BYTES) {
        decode()
    } else {
        tokio::task::spawn_blocking(decode)
            .await
            .map_err(ApiError::internal)?
    }
    .map_err(|e| refuse(ApiError::bad_request(e.code.as_str(), e.message)))?;
    if elements > max_records as u64 {
        return Err(refuse(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_records",
            format!(
                "the request holds {elements} records; the limit is {max_records} (ingest.max_batch_records): split it into smaller batches"
            ),
        )));
    }
    for r in &decoded.rejected {
        metrics::counter!("tally_ingest_records_rejected_total", "code" => r.code.as_str())
            .increment(1);
    }
    state
        .store
        .counters()
        .rejected(decoded.rejected.len() as u64);
    let records: Vec<_> = decoded.records.into_iter().map(|(_, r)| r).collect();
    let outcome = state.store.append(records).await.map_err(|e| match e {
        StoreError::Closed => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down: retry against another instance or after restart",
        ),
        other => {
            tracing::error!(error = %other, "append failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("nothing from this request was stored: {other}"),
            )
        }
    })?;
    metrics::counter!("tally_ingest_records_accepted_total").increment(outcome.accepted);
    metrics::counter!("tally_ingest_records_duplicate_total").increment(outcome.duplicates);
    Ok(Json(IngestSummary {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
        rejected: decoded.rejected,
    }))
}
