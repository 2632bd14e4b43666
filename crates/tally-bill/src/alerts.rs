//! Budgets, alerts and webhook deliveries.
//!
//! An alert is a row raised once per (kind, subject, period, level), so
//! checking again never alerts twice. Each alert is queued for every
//! webhook that covers its account; a delivery POSTs the alert as JSON
//! with `X-Tally-Signature: sha256=<hex HMAC-SHA256 of the body>` under the
//! webhook's secret, and is retried with exponential backoff until it is
//! answered 2xx or runs out of attempts. Every attempt updates the
//! delivery log.

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tally_core::billing::{BillingPeriod, PeriodLabel};
use tally_db::Database;
use tally_store::objects::RawObjects;

use crate::accounts::{Account, get_account, list_accounts};
use crate::reports::sum_rated;
use crate::{AccountScope, BillingError, decimal, instant, ledger};

/// Attempts before a delivery is given up.
pub const MAX_ATTEMPTS: i64 = 8;

/// A spending limit of an account (or one of its projects) per period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Budget {
    /// Its id.
    pub budget_id: String,
    /// The account.
    pub account_id: String,
    /// One project of the account, or the whole account.
    pub project_id: Option<String>,
    /// The limit per billing period, in the account's currency.
    pub amount: Decimal,
    /// Percentages of the limit that raise an alert (50, 80, 100).
    pub thresholds: Vec<Decimal>,
}

/// Creates a budget. Refuses a non-positive limit, no thresholds, a
/// threshold that is not positive, or a project the account does not pay
/// for directly.
pub async fn create_budget(
    db: &Database,
    account_id: &str,
    project_id: Option<&str>,
    amount: Decimal,
    thresholds: &[Decimal],
) -> Result<Budget, BillingError> {
    let account = get_account(db, &AccountScope::All, account_id).await?;
    if amount <= Decimal::ZERO {
        return Err(BillingError::Invalid(format!(
            "a budget must be positive, got {amount}"
        )));
    }
    if thresholds.is_empty() || thresholds.iter().any(|t| *t <= Decimal::ZERO) {
        return Err(BillingError::Invalid(
            "give one or more positive threshold percentages, e.g. 50,80,100".into(),
        ));
    }
    if let Some(p) = project_id
        && !account.projects.iter().any(|x| x == p)
    {
        return Err(BillingError::Invalid(format!(
            "account '{account_id}' does not pay for project '{p}': add it first"
        )));
    }
    let mut thresholds = thresholds.to_vec();
    thresholds.sort();
    thresholds.dedup();
    let budget = Budget {
        budget_id: format!("bud_{}", uuid::Uuid::new_v4().simple()),
        account_id: account_id.to_string(),
        project_id: project_id.map(str::to_string),
        amount,
        thresholds,
    };
    sqlx::query(
        "INSERT INTO budgets (budget_id, account_id, project_id, amount, thresholds, created_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&budget.budget_id)
    .bind(&budget.account_id)
    .bind(&budget.project_id)
    .bind(budget.amount.to_string())
    .bind(serde_json::to_string(&budget.thresholds).expect("decimals serialize"))
    .bind(Utc::now().timestamp_micros())
    .execute(&db.pool)
    .await?;
    Ok(budget)
}

/// Budgets of the accounts the caller may see.
pub async fn list_budgets(
    db: &Database,
    scope: &AccountScope,
) -> Result<Vec<Budget>, BillingError> {
    let (all, one) = scope.binds();
    let rows: Vec<(String, String, Option<String>, String, String)> = sqlx::query_as(
        "SELECT budget_id, account_id, project_id, amount, thresholds FROM budgets \
         WHERE ($1 OR account_id = $2) ORDER BY account_id, budget_id",
    )
    .bind(all)
    .bind(one)
    .fetch_all(&db.pool)
    .await?;
    rows.into_iter()
        .map(|(budget_id, account_id, project_id, amount, thresholds)| {
            Ok(Budget {
                budget_id,
                account_id,
                project_id,
                amount: decimal("budget amount", &amount)?,
                thresholds: serde_json::from_str(&thresholds)
                    .map_err(|e| BillingError::Invalid(format!("stored budget thresholds: {e}")))?,
            })
        })
        .collect()
}

/// A raised alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    /// Its id.
    pub alert_id: String,
    /// The account.
    pub account_id: String,
    /// `budget` or `low_balance`.
    pub kind: String,
    /// What it is about (a budget id, or the account).
    pub subject: String,
    /// The billing period.
    pub period: String,
    /// The threshold crossed.
    pub level: String,
    /// For people.
    pub message: String,
    /// When.
    pub raised_at: DateTime<Utc>,
}

/// Raises an alert unless the same one was raised before, and queues it
/// for every webhook covering its account. Returns whether it is new.
async fn raise(db: &Database, alert: &Alert) -> Result<bool, BillingError> {
    let body = serde_json::to_string(alert).expect("alerts serialize");
    let mut tx = db.begin_write().await?;
    let inserted = sqlx::query(
        "INSERT INTO alerts (alert_id, account_id, kind, subject, period, level, message, body, raised_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (kind, subject, period, level) DO NOTHING",
    )
    .bind(&alert.alert_id)
    .bind(&alert.account_id)
    .bind(&alert.kind)
    .bind(&alert.subject)
    .bind(&alert.period)
    .bind(&alert.level)
    .bind(&alert.message)
    .bind(&body)
    .bind(alert.raised_at.timestamp_micros())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, webhook_id, alert_id, status, next_attempt_at_us) \
             SELECT 'dlv_' || webhook_id || '_' || $1, webhook_id, $1, 'pending', $2 FROM webhooks \
             WHERE account_id IS NULL OR account_id = $3",
        )
        .bind(&alert.alert_id)
        .bind(alert.raised_at.timestamp_micros())
        .bind(&alert.account_id)
        .execute(&mut *tx)
        .await?;
        tracing::info!(alert = %alert.message, "alert raised");
    }
    tx.commit().await?;
    Ok(inserted == 1)
}

fn new_alert(
    account_id: &str,
    kind: &str,
    subject: &str,
    period: PeriodLabel,
    level: String,
    message: String,
    now: DateTime<Utc>,
) -> Alert {
    Alert {
        alert_id: format!("alr_{}", uuid::Uuid::new_v4().simple()),
        account_id: account_id.to_string(),
        kind: kind.to_string(),
        subject: subject.to_string(),
        period: period.to_string(),
        level,
        message,
        raised_at: now,
    }
}

/// Raises a low-balance alert when a prepaid account's funds are under its
/// threshold (once per period).
pub async fn check_low_balance(
    db: &Database,
    account: &Account,
    now: DateTime<Utc>,
) -> Result<Option<Alert>, BillingError> {
    let Some(threshold) = account.spec.low_balance else {
        return Ok(None);
    };
    let id = &account.spec.account_id;
    let b = ledger::balances(db, &AccountScope::All, id).await?;
    if b.prepaid >= threshold {
        return Ok(None);
    }
    let period = PeriodLabel::containing(now, account.spec.billing_day, account.timezone());
    let alert = new_alert(
        id,
        "low_balance",
        id,
        period,
        threshold.to_string(),
        format!(
            "account {id}: prepaid funds {} {} are below {threshold}: top up",
            b.prepaid, b.currency
        ),
        now,
    );
    Ok(raise(db, &alert).await?.then_some(alert))
}

/// Compares every budget with its current period's rated spend and raises
/// an alert for each threshold crossed. Returns the new alerts.
pub async fn check_budgets(
    db: &Database,
    rated: &RawObjects,
    now: DateTime<Utc>,
) -> Result<Vec<Alert>, BillingError> {
    let budgets = list_budgets(db, &AccountScope::All).await?;
    if budgets.is_empty() {
        return Ok(Vec::new());
    }
    let accounts = list_accounts(db, &AccountScope::All).await?;
    let mut periods: std::collections::BTreeMap<String, (BillingPeriod, String)> =
        Default::default();
    for a in &accounts {
        let label = PeriodLabel::containing(now, a.spec.billing_day, a.timezone());
        let p = BillingPeriod::new(label, a.spec.billing_day, a.timezone())?;
        periods.insert(
            a.spec.account_id.clone(),
            (p, a.spec.currency.code().to_string()),
        );
    }
    let from = periods.values().map(|(p, _)| p.start).min().unwrap_or(now);
    let to = periods.values().map(|(p, _)| p.end).max().unwrap_or(now);
    let spend = sum_rated(db, rated, from, to, |owner, l| {
        let owner = owner?;
        let (p, currency) = periods.get(owner)?;
        (l.period_start >= p.start && l.period_start < p.end && l.currency == *currency)
            .then(|| (owner.to_string(), l.project_id.clone()))
    })
    .await?;
    let mut raised = Vec::new();
    for b in &budgets {
        let spent: Decimal = spend
            .iter()
            .filter(|((a, p), _)| {
                *a == b.account_id && b.project_id.as_ref().is_none_or(|x| x == p)
            })
            .map(|(_, v)| *v)
            .sum();
        let Some((period, currency)) = periods.get(&b.account_id) else {
            continue;
        };
        let percent = spent * Decimal::ONE_HUNDRED / b.amount;
        for t in b.thresholds.iter().filter(|t| percent >= **t) {
            let scope = match &b.project_id {
                Some(p) => format!("project {p} of account {}", b.account_id),
                None => format!("account {}", b.account_id),
            };
            let alert = new_alert(
                &b.account_id,
                "budget",
                &b.budget_id,
                period.label,
                t.normalize().to_string(),
                format!(
                    "{scope} has spent {} of its {} {currency} budget for {} ({}%, threshold {}%)",
                    spent.round_dp(2),
                    b.amount,
                    period.label,
                    percent.round_dp(1),
                    t.normalize()
                ),
                now,
            );
            if raise(db, &alert).await? {
                raised.push(alert);
            }
        }
    }
    Ok(raised)
}

/// Alerts of the accounts the caller may see, newest first.
pub async fn list_alerts(db: &Database, scope: &AccountScope) -> Result<Vec<Alert>, BillingError> {
    let (all, one) = scope.binds();
    type Row = (String, String, String, String, String, String, String, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT alert_id, account_id, kind, subject, period, level, message, raised_at_us \
             FROM alerts WHERE ($1 OR account_id = $2) ORDER BY raised_at_us DESC, alert_id",
    )
    .bind(all)
    .bind(one)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(alert_id, account_id, kind, subject, period, level, message, at)| Alert {
                alert_id,
                account_id,
                kind,
                subject,
                period,
                level,
                message,
                raised_at: instant(at),
            },
        )
        .collect())
}

/// A webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    /// Its id.
    pub webhook_id: String,
    /// Where alerts are POSTed.
    pub url: String,
    /// Only this account's alerts (else every account's).
    pub account_id: Option<String>,
    /// The signing secret (shown when created, never listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Registers a webhook; returns it with its signing secret (shown once).
pub async fn create_webhook(
    db: &Database,
    url: &str,
    account_id: Option<&str>,
) -> Result<Webhook, BillingError> {
    if !url.starts_with("http://") {
        return Err(BillingError::Invalid(format!(
            "webhook URL '{url}' must start with http:// (this build has no TLS client; put a TLS-terminating proxy in front for https)"
        )));
    }
    if let Some(a) = account_id {
        get_account(db, &AccountScope::All, a).await?;
    }
    let secret = format!("whsec_{}", uuid::Uuid::new_v4().simple());
    let hook = Webhook {
        webhook_id: format!("wh_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        url: url.to_string(),
        account_id: account_id.map(str::to_string),
        secret: Some(secret.clone()),
    };
    sqlx::query(
        "INSERT INTO webhooks (webhook_id, url, secret, account_id, created_at_us) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&hook.webhook_id)
    .bind(&hook.url)
    .bind(&secret)
    .bind(&hook.account_id)
    .bind(Utc::now().timestamp_micros())
    .execute(&db.pool)
    .await?;
    Ok(hook)
}

/// The signature header value of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One delivery in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// Its id.
    pub delivery_id: String,
    /// The webhook.
    pub webhook_id: String,
    /// The alert.
    pub alert_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// HTTP status of the last attempt.
    pub last_status: Option<i64>,
    /// Error of the last attempt.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending ones).
    pub next_attempt_at: DateTime<Utc>,
}

/// The delivery log, newest first.
pub async fn deliveries(db: &Database) -> Result<Vec<Delivery>, BillingError> {
    type Row = (
        String,
        String,
        String,
        String,
        i64,
        Option<i64>,
        Option<String>,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT delivery_id, webhook_id, alert_id, status, attempts, last_status, last_error, next_attempt_at_us \
         FROM webhook_deliveries ORDER BY next_attempt_at_us DESC, delivery_id",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                delivery_id,
                webhook_id,
                alert_id,
                status,
                attempts,
                last_status,
                last_error,
                next,
            )| {
                Delivery {
                    delivery_id,
                    webhook_id,
                    alert_id,
                    status,
                    attempts,
                    last_status,
                    last_error,
                    next_attempt_at: instant(next),
                }
            },
        )
        .collect())
}

/// The wait before attempt `attempts + 1`: 10 s doubled per attempt.
pub fn backoff(attempts: i64) -> Duration {
    Duration::seconds(10 << attempts.clamp(0, 12))
}

/// Makes every delivery that is due one attempt. Returns how many were
/// delivered in this pass.
pub async fn deliver_due(db: &Database, now: DateTime<Utc>) -> Result<usize, BillingError> {
    type Due = (String, String, String, String, i64);
    let due: Vec<Due> = sqlx::query_as(
        "SELECT d.delivery_id, w.url, w.secret, a.body, d.attempts FROM webhook_deliveries d \
         JOIN webhooks w ON w.webhook_id = d.webhook_id JOIN alerts a ON a.alert_id = d.alert_id \
         WHERE d.status = 'pending' AND d.next_attempt_at_us <= $1 ORDER BY d.next_attempt_at_us",
    )
    .bind(now.timestamp_micros())
    .fetch_all(&db.pool)
    .await?;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| BillingError::Invalid(format!("cannot build the HTTP client: {e}")))?;
    let mut delivered = 0;
    for (id, url, secret, body, attempts) in due {
        let result = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-tally-signature", signature(&secret, body.as_bytes()))
            .header("x-tally-delivery", &id)
            .body(body)
            .send()
            .await;
        let attempts = attempts + 1;
        let (status, code, error) = match result {
            Ok(r) if r.status().is_success() => {
                ("delivered", Some(r.status().as_u16() as i64), None)
            }
            Ok(r) => (
                "pending",
                Some(r.status().as_u16() as i64),
                Some(format!("answered {}", r.status())),
            ),
            Err(e) => ("pending", None, Some(e.to_string())),
        };
        let status = if status == "pending" && attempts >= MAX_ATTEMPTS {
            "failed"
        } else {
            status
        };
        delivered += usize::from(status == "delivered");
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = $2, last_status = $3, last_error = $4, \
             next_attempt_at_us = $5, delivered_at_us = $6 WHERE delivery_id = $7",
        )
        .bind(status)
        .bind(attempts)
        .bind(code)
        .bind(error)
        .bind((now + backoff(attempts)).timestamp_micros())
        .bind((status == "delivered").then_some(now.timestamp_micros()))
        .bind(&id)
        .execute(&db.pool)
        .await?;
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!(backoff(0), Duration::seconds(10));
        assert_eq!(backoff(1), Duration::seconds(20));
        assert_eq!(backoff(3), Duration::seconds(80));
        assert_eq!(backoff(100), Duration::seconds(10 << 12));
    }
}
