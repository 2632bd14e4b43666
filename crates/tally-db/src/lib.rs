//! Tally's billing database: where the segment catalog, API keys and (later)
//! accounts, invoices and the ledger live.
//!
//! The embedded default is a SQLite file in the data directory. SQL in the
//! migrations is kept portable (BIGINT microseconds for instants, TEXT ids,
//! no SQLite-only syntax) so that the PostgreSQL backend added by the billing
//! work reuses the same statements.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// The pool type every data-layer crate uses.
pub type Pool = sqlx::SqlitePool;

/// The migration history of the SQLite backend.
pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Errors of opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not one Tally understands.
    #[error(
        "unsupported database URL '{0}': use sqlite://PATH (PostgreSQL support comes with the billing module)"
    )]
    UnsupportedUrl(String),
    /// The database could not be opened.
    #[error("cannot open the billing database {url}: {source}")]
    Open {
        /// The URL.
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate the billing database {url}: {source}")]
    Migrate {
        /// The URL.
        url: String,
        /// The cause.
        source: sqlx::migrate::MigrateError,
    },
}

/// An open, migrated billing database.
#[derive(Debug, Clone)]
pub struct Database {
    /// The connection pool.
    pub pool: Pool,
    /// The URL it was opened with.
    pub url: String,
}

impl Database {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Database, DbError> {
        if !url.starts_with("sqlite:") {
            return Err(DbError::UnsupportedUrl(url.to_string()));
        }
        let open_err = |source| DbError::Open {
            url: url.to_string(),
            source,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(open_err)?
            .create_if_missing(true)
            // WAL lets CLI commands read while a server writes; FULL makes a
            // committed catalog change survive power loss, which the raw
            // store relies on before it deletes a write-ahead log file.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        SQLITE_MIGRATIONS
            .run(&pool)
            .await
            .map_err(|source| DbError::Migrate {
                url: url.to_string(),
                source,
            })?;
        Ok(Database {
            pool,
            url: url.to_string(),
        })
    }

    /// The URL of a SQLite database file inside `dir`.
    pub fn sqlite_url_in(dir: &std::path::Path) -> String {
        format!("sqlite://{}", dir.join("tally.db").display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_and_migrates_twice() {
        let dir = tempfile::tempdir().unwrap();
        let url = Database::sqlite_url_in(dir.path());
        let db = Database::open(&url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_segments")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(n, 0);
        drop(db);
        Database::open(&url).await.unwrap();
    }

    #[tokio::test]
    async fn refuses_unknown_urls_with_advice() {
        let err = Database::open("mysql://x").await.unwrap_err();
        assert!(err.to_string().contains("sqlite://"));
    }
}
