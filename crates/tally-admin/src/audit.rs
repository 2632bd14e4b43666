//! The audit log: every write an operator makes through the API, with who
//! made it, when, and the state of what it changed before and after.
//! Append-only: the database refuses updates and deletes (0007_show.sql).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_db::Pool;

/// One write, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Position in the log (increasing).
    pub audit_id: i64,
    /// When the write was answered.
    pub at: DateTime<Utc>,
    /// Who made it (the API key id).
    pub principal: String,
    /// What was asked and answered: `POST /v1/invoices/x/finalize -> 200`.
    pub action: String,
    /// What it changed (the request path's resource).
    pub subject: String,
    /// The subject's state before, when it has one.
    pub before: Option<serde_json::Value>,
    /// Its state after (or the answer, for writes that create things).
    pub after: Option<serde_json::Value>,
}

/// A write to record.
#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    /// Who.
    pub principal: String,
    /// What.
    pub action: String,
    /// On what.
    pub subject: String,
    /// State before.
    pub before: Option<serde_json::Value>,
    /// State after.
    pub after: Option<serde_json::Value>,
}

/// Appends an entry.
pub async fn record(
    pool: &Pool,
    entry: &NewAuditEntry,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
    sqlx::query(
        "INSERT INTO audit_log (at_us, principal, action, subject, before_state, after_state) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(at.timestamp_micros())
    .bind(&entry.principal)
    .bind(&entry.action)
    .bind(&entry.subject)
    .bind(json(&entry.before))
    .bind(json(&entry.after))
    .execute(pool)
    .await?;
    Ok(())
}

type AuditRow = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

/// The newest entries first, up to `limit`, older than `before_id` when
/// given (pagination).
pub async fn list(
    pool: &Pool,
    limit: i64,
    before_id: Option<i64>,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT audit_id, at_us, principal, action, subject, before_state, after_state FROM audit_log \
         WHERE audit_id < $1 ORDER BY audit_id DESC LIMIT $2",
    )
    .bind(before_id.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Ok(rows
        .into_iter()
        .map(
            |(audit_id, at, principal, action, subject, before, after)| AuditEntry {
                audit_id,
                at: DateTime::from_timestamp_micros(at).unwrap_or_default(),
                principal,
                action,
                subject,
                before: parse(before),
                after: parse(after),
            },
        )
        .collect())
}
