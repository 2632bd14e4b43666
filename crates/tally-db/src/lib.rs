//! Tally's billing database: where the segment catalog, API keys, rating
//! runs, price plans, accounts, invoices and the ledger live.
//!
//! Two backends behind one pool type: a SQLite file in the data directory
//! (the embedded default) and PostgreSQL (`postgres://…`, for several
//! `tally serve` processes sharing one database). Every statement in the
//! data layer is written once, in the dialect both accept: `$1`-style
//! parameters, BIGINT microseconds for instants, TEXT ids and exact decimals
//! as TEXT, `INSERT … ON CONFLICT`, `RETURNING`. What the dialects cannot
//! share (triggers, mostly) lives in one migration history per backend.

use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::MigrateDatabase;
use sqlx::{Any, Executor};

mod appends;
mod reads;
pub use appends::{AppendError, SqliteAppends};
pub use reads::{Param, ReadError, SqliteReads};
/// The SQLite binding [`SqliteReads`] decodes rows with.
pub use rusqlite;

/// What every connection to the SQLite file sets: the pool's, and the
/// rusqlite ones of [`SqliteReads`] and [`SqliteAppends`].
///
/// FULL makes a committed write (a catalog change the raw store relies on
/// before it deletes a write-ahead log file, a run's cells) survive power
/// loss; the busy timeout makes a connection wait for another one's write
/// lock or checkpoint instead of failing. Summaries read a large file's
/// cells and appends insert into its indexes: a 16 MiB page cache per
/// connection (SQLite's default is 2 MiB) and pages read through a 256 MiB
/// memory map instead of a read() copy each. The journal mode is a
/// property of the file, set once by the pool.
const SQLITE_SETTINGS: &str = "PRAGMA busy_timeout = 30000; PRAGMA synchronous = FULL; \
     PRAGMA foreign_keys = ON; PRAGMA cache_size = -16384; PRAGMA mmap_size = 268435456;";

/// The pool type every data-layer crate uses.
pub type Pool = sqlx::AnyPool;

/// The migration history of the SQLite backend.
pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The migration history of the PostgreSQL backend.
pub static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which engine a [`Database`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (embedded).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a URL names, if Tally supports it.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Errors of opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not one Tally understands.
    #[error(
        "unsupported database URL '{0}': use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"
    )]
    UnsupportedUrl(String),
    /// The database could not be opened.
    #[error("cannot open the billing database {url}: {source}")]
    Open {
        /// The URL (without its password).
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate the billing database {url}: {source}")]
    Migrate {
        /// The URL (without its password).
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
    /// The engine behind the pool.
    pub backend: Backend,
    /// Read-only connections for reads of many rows, on SQLite only.
    reads: Option<Arc<SqliteReads>>,
    /// The connection bulk appends write through, on SQLite only.
    appends: Option<Arc<SqliteAppends>>,
}

fn install_drivers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

/// The file a `sqlite:` URL names: the part after the scheme, without
/// its options.
fn sqlite_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split('?').next().unwrap_or(rest)
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Database {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Database, DbError> {
        install_drivers();
        let backend = Backend::of_url(url).ok_or_else(|| DbError::UnsupportedUrl(redact(url)))?;
        let open_err = |source| DbError::Open {
            url: redact(url),
            source,
        };
        let pool = match backend {
            Backend::Sqlite => {
                // `mode=rwc` creates the file; the pragmas below are what the
                // SQLite driver's typed options would set, applied per
                // connection because the Any driver only reads the URL.
                let url = if url.contains("mode=") {
                    url.to_string()
                } else if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                };
                AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets CLI commands read while a server
                            // writes.
                            conn.execute("PRAGMA journal_mode = WAL;").await?;
                            conn.execute(SQLITE_SETTINGS).await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .map_err(open_err)?
            }
            Backend::Postgres => {
                if !Any::database_exists(url).await.map_err(open_err)? {
                    Any::create_database(url).await.map_err(open_err)?;
                }
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await
                    .map_err(open_err)?
            }
        };
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|source| DbError::Migrate {
                url: redact(url),
                source,
            })?;
        let (reads, appends) = match backend {
            Backend::Sqlite => (
                Some(SqliteReads::new(sqlite_path(url).into())),
                Some(SqliteAppends::new(sqlite_path(url).into())),
            ),
            Backend::Postgres => (None, None),
        };
        Ok(Database {
            pool,
            url: url.to_string(),
            backend,
            reads,
            appends,
        })
    }

    /// Read-only connections for queries that return many rows, when the
    /// backend is SQLite (see [`SqliteReads`]); `None` on PostgreSQL, whose
    /// rows arrive over the network through the pool anyway.
    pub fn sqlite_reads(&self) -> Option<&Arc<SqliteReads>> {
        self.reads.as_ref()
    }

    /// The connection for appends of many rows, when the backend is SQLite
    /// (see [`SqliteAppends`]); `None` on PostgreSQL, where a multi-row
    /// `INSERT` through the pool is one round trip anyway.
    pub fn sqlite_appends(&self) -> Option<&Arc<SqliteAppends>> {
        self.appends.as_ref()
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock at once (`BEGIN IMMEDIATE`), so a transaction that reads before
    /// it writes waits for other writers instead of failing when it
    /// upgrades; PostgreSQL locks the rows it touches.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// The URL of a SQLite database file inside `dir`.
    pub fn sqlite_url_in(dir: &std::path::Path) -> String {
        format!("sqlite://{}", dir.join("tally.db").display())
    }
}

/// The `VALUES` list of a multi-row INSERT: `rows` groups of `columns`
/// parameters, bound in order. Both engines accept at least 32,766
/// parameters per statement; callers chunk below that.
///
/// PostgreSQL gets numbered parameters, `($1, $2), ($3, $4)`. SQLite gets
/// anonymous ones, `(?, ?), (?, ?)`: sqlx asks SQLite for every
/// parameter's name before binding it, and SQLite finds a name by scanning
/// the statement's list of names, so numbered parameters make binding
/// quadratic in their count. That scan was 9% of a rating run's CPU when
/// it wrote its daily cells (docs/benchmarks.md).
pub fn values_placeholders(backend: Backend, rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 6);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&(r * columns + c + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Helpers for tests that need a real PostgreSQL.
pub mod testing {
    /// The server tests use: `TALLY_TEST_POSTGRES` (a URL without a
    /// database name), else the local default that `scripts/test` starts.
    pub fn postgres_server() -> String {
        std::env::var("TALLY_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
    }

    /// A URL naming a fresh, uniquely named database on the test server
    /// (created by [`crate::Database::open`]). Tests using it fail, never
    /// skip, when the server is down: `scripts/test` starts one.
    pub fn fresh_postgres_url(label: &str) -> String {
        let unique = format!(
            "{}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
            label
        );
        let name: String = format!("tally_test_{unique}")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(63)
            .collect();
        format!("{}/{}", postgres_server(), name.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn opens_and_migrates_twice(url: &str) {
        let db = Database::open(url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_segments")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(n, 0);
        drop(db);
        Database::open(url).await.unwrap();
    }

    #[tokio::test]
    async fn sqlite_opens_and_migrates_twice() {
        let dir = tempfile::tempdir().unwrap();
        opens_and_migrates_twice(&Database::sqlite_url_in(dir.path())).await;
    }

    #[tokio::test]
    async fn postgres_opens_and_migrates_twice() {
        opens_and_migrates_twice(&testing::fresh_postgres_url("migrate")).await;
    }

    #[test]
    fn a_sqlite_url_names_its_file_without_options() {
        assert_eq!(sqlite_path("sqlite:///x/tally.db"), "/x/tally.db");
        assert_eq!(sqlite_path("sqlite:///x/tally.db?mode=rwc"), "/x/tally.db");
        assert_eq!(sqlite_path("sqlite:tally.db"), "tally.db");
    }

    #[tokio::test]
    async fn sqlite_reads_see_what_the_pool_committed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&format!("{}?mode=rwc", Database::sqlite_url_in(dir.path())))
            .await
            .unwrap();
        sqlx::query("INSERT INTO keystone_projects (project_id, domain_id, updated_at_us) VALUES ('p1', 'd1', 0)")
            .execute(&db.pool)
            .await
            .unwrap();
        let reads = db.sqlite_reads().expect("a SQLite database has readers");
        let rows = reads
            .query(
                "SELECT domain_id FROM keystone_projects WHERE project_id = $1".into(),
                vec![Param::Text("p1".into())],
                |r| r.get::<_, String>(0),
            )
            .await
            .unwrap();
        assert_eq!(rows, vec!["d1".to_string()]);
    }

    #[tokio::test]
    async fn postgres_has_no_sqlite_reads() {
        let db = Database::open(&testing::fresh_postgres_url("reads"))
            .await
            .unwrap();
        assert!(db.sqlite_reads().is_none());
    }

    #[tokio::test]
    async fn refuses_unknown_urls_with_advice() {
        let err = Database::open("mysql://x").await.unwrap_err();
        assert!(err.to_string().contains("sqlite://"));
        assert!(err.to_string().contains("postgres://"));
    }

    #[test]
    fn multi_row_placeholders_are_numbered_row_by_row_or_anonymous() {
        let pg = Backend::Postgres;
        assert_eq!(values_placeholders(pg, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values_placeholders(pg, 1, 1), "($1)");
        assert_eq!(values_placeholders(pg, 0, 4), "");
        let lite = Backend::Sqlite;
        assert_eq!(values_placeholders(lite, 2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(values_placeholders(lite, 0, 4), "");
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://tally:secret@db:5432/tally"),
            "postgres://tally:***@db:5432/tally"
        );
        assert_eq!(
            redact("postgres://tally@db/tally"),
            "postgres://tally@db/tally"
        );
        assert_eq!(redact("sqlite:///x/tally.db"), "sqlite:///x/tally.db");
    }
}
