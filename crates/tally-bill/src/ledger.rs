//! Storing ledger transactions and deriving balances from their entries.
//!
//! Transactions are built (and checked to balance) by
//! `tally_core::ledger`; this module appends them. The tables are
//! append-only by trigger; a balance is always a sum of entries, never a
//! stored number.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tally_core::ledger::{LedgerTransaction, TransactionKind};
use tally_db::Database;

use crate::accounts::get_account;
use crate::{AccountScope, BillingError, decimal, instant};

/// Appends a balanced transaction inside the caller's database transaction.
pub async fn post(
    conn: &mut sqlx::AnyConnection,
    txn: &LedgerTransaction,
    account_id: Option<&str>,
    reference: Option<&str>,
    at: DateTime<Utc>,
) -> Result<String, BillingError> {
    // Constructed through LedgerTransaction::new, so it balances; checked
    // again here because this is the last step before the books.
    LedgerTransaction::new(txn.kind, txn.memo.clone(), txn.entries.clone())?;
    let txn_id = format!("txn_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(
        "INSERT INTO ledger_transactions (txn_id, kind, memo, account_id, reference, created_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&txn_id)
    .bind(txn.kind.as_str())
    .bind(&txn.memo)
    .bind(account_id)
    .bind(reference)
    .bind(at.timestamp_micros())
    .execute(&mut *conn)
    .await?;
    for (i, e) in txn.entries.iter().enumerate() {
        sqlx::query(
            "INSERT INTO ledger_entries (txn_id, entry_no, ledger_account, currency, amount) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&txn_id)
        .bind(i as i64 + 1)
        .bind(&e.account)
        .bind(e.amount.currency.code())
        .bind(e.amount.amount.to_string())
        .execute(&mut *conn)
        .await?;
    }
    Ok(txn_id)
}

/// The balance of a ledger account per currency: the sum of its entries.
pub async fn balance(
    conn: &mut sqlx::AnyConnection,
    ledger_account: &str,
) -> Result<BTreeMap<String, Decimal>, BillingError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT currency, amount FROM ledger_entries WHERE ledger_account = $1")
            .bind(ledger_account)
            .fetch_all(&mut *conn)
            .await?;
    let mut out: BTreeMap<String, Decimal> = BTreeMap::new();
    for (currency, amount) in rows {
        *out.entry(currency).or_default() += decimal("ledger amount", &amount)?;
    }
    Ok(out)
}

/// An account's standing, derived from the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Balances {
    /// The account.
    pub account_id: String,
    /// Currency.
    pub currency: String,
    /// What the customer owes (positive) on finalized invoices.
    pub receivable: Decimal,
    /// Prepaid funds available (positive).
    pub prepaid: Decimal,
}

/// The balances of an account the caller may see.
pub async fn balances(
    db: &Database,
    scope: &AccountScope,
    account_id: &str,
) -> Result<Balances, BillingError> {
    let account = get_account(db, scope, account_id).await?;
    balances_of(db, &account).await
}

/// The balances of an account already read in the caller's scope (a page
/// that shows the account as well need not read it twice).
pub async fn balances_of(
    db: &Database,
    account: &crate::accounts::Account,
) -> Result<Balances, BillingError> {
    let account_id = account.spec.account_id.as_str();
    let currency = account.spec.currency.code().to_string();
    let mut conn = db.pool.acquire().await?;
    let receivable = balance(&mut conn, &format!("receivable:{account_id}")).await?;
    let prepaid = balance(&mut conn, &format!("prepaid:{account_id}")).await?;
    Ok(Balances {
        account_id: account_id.to_string(),
        receivable: receivable
            .get(&currency)
            .copied()
            .unwrap_or_default()
            .normalize(),
        // The prepaid account is a liability: funds held show as credits.
        prepaid: (-prepaid.get(&currency).copied().unwrap_or_default()).normalize(),
        currency,
    })
}

/// A stored transaction with its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PostedTransaction {
    /// Its id.
    pub txn_id: String,
    /// What it records.
    pub kind: String,
    /// Why.
    pub memo: String,
    /// The document it belongs to (invoice or credit note id).
    pub reference: Option<String>,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
    /// Entries: (ledger account, currency, amount).
    pub entries: Vec<(String, String, Decimal)>,
}

/// The transactions of an account the caller may see, oldest first.
pub async fn transactions(
    db: &Database,
    scope: &AccountScope,
    account_id: &str,
) -> Result<Vec<PostedTransaction>, BillingError> {
    get_account(db, scope, account_id).await?;
    let rows: Vec<EntryRow> = sqlx::query_as(
        "SELECT t.txn_id, t.kind, t.memo, t.reference, t.created_at_us, \
         e.ledger_account, e.currency, e.amount \
         FROM ledger_transactions t JOIN ledger_entries e ON e.txn_id = t.txn_id \
         WHERE t.account_id = $1 ORDER BY t.created_at_us, t.txn_id, e.entry_no",
    )
    .bind(account_id)
    .fetch_all(&db.pool)
    .await?;
    let mut out: Vec<PostedTransaction> = Vec::new();
    for r in rows {
        let entry = (
            r.ledger_account,
            r.currency,
            decimal("ledger amount", &r.amount)?,
        );
        match out.last_mut() {
            Some(t) if t.txn_id == r.txn_id => t.entries.push(entry),
            _ => out.push(PostedTransaction {
                txn_id: r.txn_id,
                kind: r.kind,
                memo: r.memo,
                reference: r.reference,
                created_at: instant(r.created_at_us),
                entries: vec![entry],
            }),
        }
    }
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    txn_id: String,
    kind: String,
    memo: String,
    reference: Option<String>,
    created_at_us: i64,
    ledger_account: String,
    currency: String,
    amount: String,
}

/// Credits a prepaid balance with money received. Any account may hold
/// prepaid funds; finalized invoices of prepaid accounts draw on them.
pub async fn top_up(
    db: &Database,
    account_id: &str,
    amount: Decimal,
    reference: &str,
) -> Result<Balances, BillingError> {
    let account = get_account(db, &AccountScope::All, account_id).await?;
    let txn = LedgerTransaction::top_up(account_id, amount, account.spec.currency)?;
    let txn = LedgerTransaction::new(
        TransactionKind::TopUp,
        format!("top-up {reference}").trim().to_string(),
        txn.entries,
    )?;
    let mut tx = db.pool.begin().await?;
    post(&mut tx, &txn, Some(account_id), Some(reference), Utc::now()).await?;
    tx.commit().await?;
    crate::alerts::check_low_balance(db, &account, Utc::now()).await?;
    balances(db, &AccountScope::All, account_id).await
}

/// Posts a manual adjustment of what an account owes, with its reason.
pub async fn adjust(
    db: &Database,
    account_id: &str,
    amount: Decimal,
    reason: &str,
) -> Result<Balances, BillingError> {
    let account = get_account(db, &AccountScope::All, account_id).await?;
    if amount.is_zero() {
        return Err(BillingError::Invalid(
            "an adjustment of 0 changes nothing".into(),
        ));
    }
    let txn = LedgerTransaction::adjustment(account_id, amount, reason, account.spec.currency)?;
    let mut tx = db.pool.begin().await?;
    post(&mut tx, &txn, Some(account_id), None, Utc::now()).await?;
    tx.commit().await?;
    balances(db, &AccountScope::All, account_id).await
}
