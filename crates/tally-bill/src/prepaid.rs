//! Prepaid balances drawn down as usage is rated, not only at month end.
//!
//! After a rating run, each prepaid account's open periods are re-summed
//! from the current rated lines and the difference from what was drawn so
//! far is posted: the prepaid balance (a liability: money held for the
//! customer) is debited and `drawn:<account>` credited. Each drawdown
//! carries the period's invoice id as reference. When that invoice is
//! finalized, the period's drawdowns are released and the invoice total
//! (tax, coupons and commitment included) is drawn instead, so the balance
//! ends exactly where the invoice says.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tally_core::Money;
use tally_core::billing::{BillingPeriod, PaymentMode, PeriodLabel};
use tally_core::ledger::{LedgerEntry, LedgerTransaction, TransactionKind};
use tally_db::Database;
use tally_store::objects::RawObjects;

use crate::accounts::{Account, list_accounts};
use crate::invoices::invoice_id;
use crate::reports::sum_rated;
use crate::{AccountScope, BillingError, alerts, decimal, ledger};

/// What one drawdown pass did for one account and period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Drawdown {
    /// The account.
    pub account_id: String,
    /// The period.
    pub period: String,
    /// Rated so far in the period (rounded to the minor unit).
    pub rated: Decimal,
    /// Posted now (negative when re-rating lowered the usage).
    pub posted: Decimal,
}

/// Net amount drawn for an invoice's period: Σ of `drawn:<account>`
/// entries referencing it, as a positive number.
pub(crate) async fn drawn_for(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    invoice_id: &str,
) -> Result<Decimal, BillingError> {
    let amounts: Vec<String> = sqlx::query_scalar(
        "SELECT e.amount FROM ledger_entries e JOIN ledger_transactions t ON t.txn_id = e.txn_id \
         WHERE e.ledger_account = $1 AND t.reference = $2",
    )
    .bind(format!("drawn:{account_id}"))
    .bind(invoice_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut sum = Decimal::ZERO;
    for a in amounts {
        sum += decimal("ledger amount", &a)?;
    }
    Ok(-sum)
}

/// A transaction moving `amount` between the prepaid balance and the
/// account's drawn usage (positive: draw; negative: give back).
pub(crate) fn draw_transaction(
    account: &Account,
    memo: String,
    amount: Decimal,
) -> Result<LedgerTransaction, BillingError> {
    let currency = account.spec.currency;
    let id = &account.spec.account_id;
    Ok(LedgerTransaction::new(
        TransactionKind::UsageDrawdown,
        memo,
        vec![
            LedgerEntry {
                account: format!("prepaid:{id}"),
                amount: Money::new(amount, currency),
            },
            LedgerEntry {
                account: format!("drawn:{id}"),
                amount: Money::new(-amount, currency),
            },
        ],
    )?)
}

/// Brings every prepaid account's drawdowns up to its rated usage in the
/// periods not invoiced yet (the current one and the one before), then
/// raises low-balance alerts; returns the drawdowns and new alerts.
pub async fn draw_down(
    db: &Database,
    rated: &RawObjects,
    now: DateTime<Utc>,
) -> Result<(Vec<Drawdown>, Vec<alerts::Alert>), BillingError> {
    let accounts: Vec<Account> = list_accounts(db, &AccountScope::All)
        .await?
        .into_iter()
        .filter(|a| a.spec.payment_mode == PaymentMode::Prepaid)
        .collect();
    // The open periods of each account, skipping finalized ones.
    let mut periods: BTreeMap<String, Vec<BillingPeriod>> = BTreeMap::new();
    for a in &accounts {
        let current = PeriodLabel::containing(now, a.spec.billing_day, a.timezone());
        for label in [current.plus(-1), current] {
            let finalized: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM invoices WHERE invoice_id = $1 AND status = 'finalized'",
            )
            .bind(invoice_id(&a.spec.account_id, label))
            .fetch_one(&db.pool)
            .await?;
            if finalized == 0 {
                periods
                    .entry(a.spec.account_id.clone())
                    .or_default()
                    .push(BillingPeriod::new(label, a.spec.billing_day, a.timezone())?);
            }
        }
    }
    let all = periods.values().flatten();
    let (Some(from), Some(to)) = (all.clone().map(|p| p.start).min(), all.map(|p| p.end).max())
    else {
        return Ok((Vec::new(), Vec::new()));
    };
    let currencies: BTreeMap<&str, &str> = accounts
        .iter()
        .map(|a| (a.spec.account_id.as_str(), a.spec.currency.code()))
        .collect();
    let rated_by_period = sum_rated(db, rated, from, to, |owner, line| {
        let owner = owner?;
        if currencies.get(owner) != Some(&line.currency.as_str()) {
            return None;
        }
        let p = periods
            .get(owner)?
            .iter()
            .find(|p| line.period_start >= p.start && line.period_start < p.end)?;
        Some((owner.to_string(), p.label))
    })
    .await?;

    let mut out = Vec::new();
    let mut raised = Vec::new();
    for a in &accounts {
        let id = &a.spec.account_id;
        for p in periods.get(id).into_iter().flatten() {
            let rated_now = rated_by_period
                .get(&(id.clone(), p.label))
                .copied()
                .unwrap_or_default();
            let rated_now = Money::new(rated_now, a.spec.currency)
                .round_to_minor_unit()
                .amount;
            let reference = invoice_id(id, p.label);
            let mut tx = db.begin_write().await?;
            let drawn = drawn_for(&mut tx, id, &reference).await?;
            let posted = rated_now - drawn;
            if !posted.is_zero() {
                let txn =
                    draw_transaction(a, format!("usage of {} rated so far", p.label), posted)?;
                ledger::post(&mut tx, &txn, Some(id), Some(&reference), now).await?;
            }
            tx.commit().await?;
            out.push(Drawdown {
                account_id: id.clone(),
                period: p.label.to_string(),
                rated: rated_now,
                posted,
            });
        }
        raised.extend(alerts::check_low_balance(db, a, now).await?);
    }
    Ok((out, raised))
}
