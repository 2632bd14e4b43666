//! Tally's show module: what operators and tenants read.
//!
//! - [`summary`]: cost and usage grouped by account, project, service,
//!   meter, resource or any attribute, per day or month, from the daily
//!   cells rating runs write (`usage_rollups`) and the levels above them.
//! - [`summary_cache`]: summary answers remembered until the rated usage
//!   or the ownership behind them changes (the database's
//!   `summary_version`).
//! - [`charts`]: SVG bar charts for the dashboard.
//! - [`csv_export`]: rated lines and invoices as CSV.
//! - [`explain`]: the run, meter, plan rule and raw records behind a
//!   rated line, and the resources and rules behind an invoice line.
//! - [`focus`]: FOCUS 1.2 rows of a billing period's invoices, as CSV or
//!   Parquet.
//! - [`pdf`]: invoices as PDF documents.
//! - [`plans`]: price plans as a reader may see them, prices in words.
//!
//! Every function takes the caller's [`tally_core::Identity`] and applies
//! its scope inside the query (a project reader's rows never leave the
//! database for anyone else), never in the handler.

pub mod charts;
pub mod csv_export;
pub mod explain;
pub mod focus;
pub mod pdf;
pub mod plans;
pub mod summary;
pub mod summary_cache;

/// Errors a caller of the show module can see.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    /// The request is not usable; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A read of many rows from the SQLite file failed.
    #[error(transparent)]
    Read(#[from] tally_db::ReadError),
    /// Reading rated lines failed.
    #[error(transparent)]
    Rating(#[from] tally_rate::job::RatingError),
    /// Reading invoices failed.
    #[error(transparent)]
    Billing(#[from] tally_bill::BillingError),
    /// The stored configuration is not usable.
    #[error(transparent)]
    Config(#[from] tally_rate::plans::ConfigError),
}
