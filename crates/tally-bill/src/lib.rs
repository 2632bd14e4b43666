//! The bill module: billing accounts, invoices, credit notes and the
//! double-entry ledger, on the billing database (SQLite or PostgreSQL).
//!
//! The arithmetic lives in `tally-core` (`invoice`, `ledger`, `billing`);
//! this crate reads accounts and rated lines, calls it, and stores what it
//! returns. What must never change once issued (finalized invoices and
//! their lines, credit notes, settlements, the ledger) is protected by
//! triggers in the database itself, so the code here cannot break it either.
//!
//! - [`accounts`]: accounts, what they own (projects, domains), plan
//!   assignments, coupons; resolving a project to its account.
//! - [`invoices`]: invoice runs (drafts, regenerated until finalized),
//!   finalization with gapless numbers, payment, void, credit notes.
//! - [`ledger`]: posting balanced transactions and deriving balances.
//! - [`prepaid`]: prepaid balances drawn down as usage is rated.
//! - [`alerts`]: budgets, low-balance alerts and signed webhook deliveries.
//! - [`reports`]: usage no account owns.

pub mod accounts;
pub mod alerts;
pub mod invoices;
pub mod ledger;
pub mod prepaid;
pub mod reports;

use rust_decimal::Decimal;
use tally_core::Identity;
use tally_core::identity::Role;

/// Errors of the billing module. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// No account with that id (or not one the caller may see).
    #[error("no billing account '{0}': list them with `tally account list`")]
    UnknownAccount(String),
    /// An account id already taken.
    #[error("billing account '{0}' already exists")]
    AccountExists(String),
    /// No invoice with that id (or not one the caller may see).
    #[error("no invoice '{0}': list them with `tally invoice list`")]
    UnknownInvoice(String),
    /// Input that is not usable.
    #[error("{0}")]
    Invalid(String),
    /// A billing rule refused the input.
    #[error(transparent)]
    Rule(#[from] tally_core::billing::BillingError),
    /// Invoicing a period that is still running.
    #[error(
        "period {period} has not ended for account '{account}' (it ends at {end}): invoice it after that"
    )]
    PeriodNotEnded {
        /// The period.
        period: String,
        /// The account.
        account: String,
        /// When it ends.
        end: String,
    },
    /// Part of the period has not been rated.
    #[error(
        "usage from {from} to {to} has not been rated: run `tally rate --from {from} --to {to}` first"
    )]
    NotRated {
        /// Start of the gap.
        from: String,
        /// End of the gap.
        to: String,
    },
    /// A plan in another currency than the account.
    #[error(
        "plan '{plan}' is in {plan_currency} but account '{account}' is billed in {account_currency}: assign a plan in {account_currency}"
    )]
    CurrencyMismatch {
        /// The plan.
        plan: String,
        /// Its currency.
        plan_currency: String,
        /// The account.
        account: String,
        /// Its currency.
        account_currency: String,
    },
    /// The invoice is not in a state that allows the operation.
    #[error("invoice '{invoice}' is {status}: {advice}")]
    WrongStatus {
        /// The invoice.
        invoice: String,
        /// Its status.
        status: String,
        /// What can be done instead.
        advice: String,
    },
    /// A credit note larger than what remains.
    #[error("{0}")]
    CreditTooLarge(String),
    /// Invoice math refused the input.
    #[error(transparent)]
    Invoice(#[from] tally_core::invoice::InvoiceError),
    /// A ledger transaction would not balance.
    #[error(transparent)]
    Ledger(#[from] tally_core::ledger::LedgerError),
    /// The stored configuration (plans) failed.
    #[error(transparent)]
    Config(#[from] tally_rate::plans::ConfigError),
    /// Reading rated lines failed.
    #[error(transparent)]
    Rating(#[from] tally_rate::RatingError),
    /// The database refused or failed.
    #[error("billing database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Which accounts a caller may see, applied inside every query of this
/// crate (never only in a handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountScope {
    /// Every account (operators).
    All,
    /// One account (its readers).
    One(String),
    /// None (project readers: invoices are per account).
    Nothing,
}

impl AccountScope {
    /// The scope of an authenticated caller.
    pub fn of(identity: &Identity) -> AccountScope {
        match &identity.role {
            Role::Admin => AccountScope::All,
            Role::AccountReader { account_id } => AccountScope::One(account_id.clone()),
            Role::ProjectReader { .. } => AccountScope::Nothing,
        }
    }

    /// The two parameters of the scope condition every scoped query ends
    /// with, `($n OR account_id = $n+1)`: "sees every account" and the one
    /// account it sees. Static SQL with binds, never text pasted into SQL.
    pub(crate) fn binds(&self) -> (bool, Option<String>) {
        match self {
            AccountScope::All => (true, None),
            AccountScope::One(id) => (false, Some(id.clone())),
            AccountScope::Nothing => (false, None),
        }
    }
}

/// What follows a rating run: prepaid drawdowns and budget checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AfterRating {
    /// Drawdowns posted (or checked) per prepaid account and open period.
    pub drawdowns: Vec<prepaid::Drawdown>,
    /// Alerts raised.
    pub alerts: Vec<alerts::Alert>,
}

/// Runs what must follow every rating run: prepaid balances drawn down to
/// the usage rated so far, and budgets compared with it.
pub async fn after_rating(
    db: &tally_db::Database,
    rated: &tally_store::objects::RawObjects,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<AfterRating, BillingError> {
    let (drawdowns, mut raised) = prepaid::draw_down(db, rated, now).await?;
    raised.extend(alerts::check_budgets(db, rated, now).await?);
    Ok(AfterRating {
        drawdowns,
        alerts: raised,
    })
}

/// Parses exact decimal text stored by this crate.
pub(crate) fn decimal(column: &str, text: &str) -> Result<Decimal, BillingError> {
    text.parse().map_err(|_| {
        BillingError::Invalid(format!(
            "stored {column} '{text}' is not a decimal: the billing database was edited by hand"
        ))
    })
}

/// Instants are stored as microseconds since the Unix epoch.
pub(crate) fn instant(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}
