//! Large reads from the SQLite backend on a blocking thread.
//!
//! sqlx runs each SQLite connection on a worker thread and hands every row
//! of a result to the async task one at a time, converted to an `AnyRow`;
//! a profile of the dashboard showed 40% of the server's time in those
//! hand-overs (thread switches, futex wake-ups) against 1% in SQLite
//! itself. A query that returns thousands of rows (a summary by project,
//! every project's owner) is therefore run here instead: on tokio's
//! blocking pool, on a read-only connection of its own, with every row
//! decoded where SQLite produces it and the whole result handed over once.
//!
//! Only reads go through here. Writes stay on the sqlx pool, except bulk
//! appends of rows the caller already holds (`appends.rs`). In WAL mode
//! each statement here reads the last committed state, the same as the
//! pool's connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, Row};
use tokio::sync::Semaphore;

/// A value bound to a numbered placeholder (`$1`, `$2`, …): the SQL text
/// is the same one the sqlx pool would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// An integer (instants are microseconds).
    Int(i64),
    /// A text (ids, names).
    Text(String),
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// SQLite refused the statement or failed while running it.
    #[error("reading the billing database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The blocking task did not finish (the runtime is shutting down).
    #[error("reading the billing database {path}: the read was cancelled ({message})")]
    Cancelled {
        /// The database file.
        path: String,
        /// What the runtime said.
        message: String,
    },
}

/// How many reads run at once. Each holds a connection with its own page
/// cache; on a small machine more would only queue for the cores.
const READERS: usize = 4;

/// Compiled statements each connection keeps. A summary's text depends
/// on its level, dimensions and filters, so a busy dashboard asks a few
/// dozen distinct texts.
const STATEMENTS_KEPT: usize = 64;

/// Read-only connections to the SQLite file of a [`crate::Database`],
/// opened when first needed and kept for the next read.
pub struct SqliteReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl std::fmt::Debug for SqliteReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReads")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteReads {
    /// Reads of the SQLite file at `path` (already created and migrated).
    pub(crate) fn new(path: PathBuf) -> Arc<SqliteReads> {
        Arc::new(SqliteReads {
            path,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(READERS),
        })
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.execute_batch(crate::SQLITE_SETTINGS)?;
        c.execute_batch("PRAGMA query_only = 1;")?;
        c.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
        Ok(c)
    }

    /// Runs `sql` with `params` bound to `$1`, `$2`, … and decodes every
    /// row with `decode`, on a blocking thread.
    pub async fn query<T, F>(
        self: &Arc<Self>,
        sql: String,
        params: Vec<Param>,
        mut decode: F,
    ) -> Result<Vec<T>, ReadError>
    where
        T: Send + 'static,
        F: FnMut(&Row<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let path = || self.path.display().to_string();
        // The semaphore is never closed, so acquiring only waits.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ReadError::Cancelled {
                path: path(),
                message: e.to_string(),
            })?;
        let reads = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let idle = reads.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            let conn = match idle {
                Some(c) => c,
                None => reads.open()?,
            };
            let rows = run(&conn, &sql, &params, &mut decode);
            // A connection whose statement failed is still usable: SQLite
            // resets the statement when it is dropped.
            if let Ok(mut v) = reads.idle.lock() {
                v.push(conn);
            }
            rows
        });
        match task.await {
            Ok(rows) => rows.map_err(|source| ReadError::Sqlite {
                path: path(),
                source,
            }),
            Err(e) => Err(ReadError::Cancelled {
                path: path(),
                message: e.to_string(),
            }),
        }
    }
}

fn run<T>(
    conn: &Connection,
    sql: &str,
    params: &[Param],
    decode: &mut impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    // A dashboard asks the same few statements again and again with other
    // binds: each connection keeps them compiled (see `open`).
    let mut stmt = conn.prepare_cached(sql)?;
    for (i, p) in params.iter().enumerate() {
        let name = format!("${}", i + 1);
        // SQLite numbers named parameters in order of first appearance;
        // binding by name keeps `$n` meaning the nth value whatever the
        // order the text uses them in.
        let Some(at) = stmt.parameter_index(&name)? else {
            continue;
        };
        match p {
            Param::Int(v) => stmt.raw_bind_parameter(at, v)?,
            Param::Text(v) => stmt.raw_bind_parameter(at, v.as_str())?,
        }
    }
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_rows() -> (tempfile::TempDir, Arc<SqliteReads>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (id TEXT, n BIGINT); \
             INSERT INTO t VALUES ('a', 1), ('b', 2), ('c', 3);",
        )
        .unwrap();
        (dir, SqliteReads::new(path))
    }

    #[tokio::test]
    async fn binds_numbered_placeholders_by_number_not_position() {
        let (_dir, reads) = file_with_rows();
        // `$2` appears before `$1` in the text.
        let rows = reads
            .query(
                "SELECT id FROM t WHERE n >= $2 AND id <> $1 ORDER BY id".into(),
                vec![Param::Text("c".into()), Param::Int(2)],
                |r| r.get::<_, String>(0),
            )
            .await
            .unwrap();
        assert_eq!(rows, vec!["b".to_string()]);
    }

    #[tokio::test]
    async fn sees_what_another_connection_committed_after_it_opened() {
        let (_dir, reads) = file_with_rows();
        let count = |reads: Arc<SqliteReads>| async move {
            reads
                .query("SELECT COUNT(*) FROM t".into(), vec![], |r| {
                    r.get::<_, i64>(0)
                })
                .await
                .unwrap()[0]
        };
        assert_eq!(count(reads.clone()).await, 3);
        Connection::open(reads.path())
            .unwrap()
            .execute("INSERT INTO t VALUES ('d', 4)", [])
            .unwrap();
        assert_eq!(count(reads.clone()).await, 4);
    }

    #[tokio::test]
    async fn a_bad_statement_names_the_file_and_leaves_the_reader_usable() {
        let (_dir, reads) = file_with_rows();
        let e = reads
            .query("SELECT nope FROM t".into(), vec![], |r| r.get::<_, i64>(0))
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("t.db") && text.contains("nope"), "{text}");
        let rows = reads
            .query("SELECT n FROM t ORDER BY n".into(), vec![], |r| {
                r.get::<_, i64>(0)
            })
            .await
            .unwrap();
        assert_eq!(rows, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn refuses_to_write() {
        let (_dir, reads) = file_with_rows();
        let e = reads
            .query("DELETE FROM t RETURNING id".into(), vec![], |r| {
                r.get::<_, String>(0)
            })
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("readonly") || e.to_string().contains("read-only"),
            "{e}"
        );
    }
}
