//! Appends of many rows to the SQLite backend, on a blocking thread.
//!
//! A rating run stores hundreds of thousands of daily cells while it
//! rates. Through sqlx every value of every row is copied into the Any
//! driver's arguments, converted again for SQLite, and sent to the
//! connection's worker thread; a profile of a month's run showed that
//! handling costing as much as SQLite's own inserts. Here a connection of
//! its own binds each value straight from the caller's rows into one
//! compiled statement, on tokio's blocking pool.
//!
//! Only appends go through here: statements that write a batch of rows
//! the caller already holds, in one transaction. Everything else (what
//! reads before it writes, migrations) stays on the sqlx pool. Both take
//! SQLite's write lock with `BEGIN IMMEDIATE`, so they serialize through
//! the file's lock like any two connections; appends from this process
//! also queue on one connection, so they never sleep in SQLite's busy
//! handler waiting for each other.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};

/// Why an append did not land.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// SQLite refused a statement or failed while running it.
    #[error("writing the billing database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The caller withdrew the append before it committed; nothing of it
    /// was written.
    #[error("writing the billing database {path}: the write was withdrawn and rolled back")]
    Withdrawn {
        /// The database file.
        path: String,
    },
    /// The blocking task did not finish (the runtime is shutting down).
    #[error("writing the billing database {path}: the write was cancelled ({message})")]
    Cancelled {
        /// The database file.
        path: String,
        /// What the runtime said.
        message: String,
    },
}

/// The writing connection to the SQLite file of a [`crate::Database`],
/// opened when first needed and kept.
pub struct SqliteAppends {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for SqliteAppends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAppends")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteAppends {
    /// Appends to the SQLite file at `path` (already created and migrated).
    pub(crate) fn new(path: PathBuf) -> Arc<SqliteAppends> {
        Arc::new(SqliteAppends {
            path,
            conn: Mutex::new(None),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.execute_batch(crate::SQLITE_SETTINGS)?;
        Ok(c)
    }

    /// Runs `work` in one write transaction on a blocking thread and
    /// commits it, unless `withdrawn` is set by then: the flag is read
    /// while the transaction holds the write lock, so a caller that sets
    /// it and then deletes what it appended (with a write of its own)
    /// either finds the append committed before its delete or never sees
    /// it at all.
    pub async fn append<T, F>(
        self: &Arc<Self>,
        withdrawn: Arc<AtomicBool>,
        work: F,
    ) -> Result<T, AppendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let appends = Arc::clone(self);
        let path = || self.path.display().to_string();
        let task = tokio::task::spawn_blocking(move || {
            // A poisoned lock only means another append panicked; the
            // connection itself rolled back when its transaction dropped.
            let mut slot = appends.conn.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(appends.open().map_err(Outcome::Failed)?);
            }
            let conn = slot.as_mut().expect("opened above");
            let tx = rusqlite::Transaction::new(conn, rusqlite::TransactionBehavior::Immediate)
                .map_err(Outcome::Failed)?;
            let out = work(&tx).map_err(Outcome::Failed)?;
            if withdrawn.load(Ordering::SeqCst) {
                // Dropping the transaction rolls it back.
                return Err(Outcome::Withdrawn);
            }
            tx.commit().map_err(Outcome::Failed)?;
            Ok(out)
        });
        match task.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(Outcome::Failed(source))) => Err(AppendError::Sqlite {
                path: path(),
                source,
            }),
            Ok(Err(Outcome::Withdrawn)) => Err(AppendError::Withdrawn { path: path() }),
            Err(e) => Err(AppendError::Cancelled {
                path: path(),
                message: e.to_string(),
            }),
        }
    }
}

enum Outcome {
    Failed(rusqlite::Error),
    Withdrawn,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> (tempfile::TempDir, Arc<SqliteAppends>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (id TEXT, n BIGINT);")
            .unwrap();
        (dir, SqliteAppends::new(path))
    }

    fn count(appends: &SqliteAppends) -> i64 {
        Connection::open(appends.path())
            .unwrap()
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    fn insert(rows: Vec<(String, i64)>) -> impl FnOnce(&Connection) -> rusqlite::Result<usize> {
        move |c| {
            let mut stmt = c.prepare_cached("INSERT INTO t (id, n) VALUES (?1, ?2)")?;
            for (id, n) in &rows {
                stmt.execute(rusqlite::params![id, n])?;
            }
            Ok(rows.len())
        }
    }

    #[tokio::test]
    async fn an_append_commits_its_rows() {
        let (_dir, appends) = table();
        let rows = vec![("a".to_string(), 1), ("b".to_string(), 2)];
        let keep = Arc::new(AtomicBool::new(false));
        assert_eq!(appends.append(keep.clone(), insert(rows)).await.unwrap(), 2);
        assert_eq!(count(&appends), 2);
        // The kept connection writes again.
        appends
            .append(keep, insert(vec![("c".to_string(), 3)]))
            .await
            .unwrap();
        assert_eq!(count(&appends), 3);
    }

    #[tokio::test]
    async fn a_withdrawn_append_leaves_nothing() {
        let (_dir, appends) = table();
        let withdrawn = Arc::new(AtomicBool::new(true));
        let err = appends
            .append(withdrawn, insert(vec![("a".to_string(), 1)]))
            .await
            .unwrap_err();
        assert!(matches!(err, AppendError::Withdrawn { .. }), "{err}");
        assert_eq!(count(&appends), 0);
    }

    #[tokio::test]
    async fn a_failing_statement_rolls_back_the_whole_append() {
        let (_dir, appends) = table();
        let keep = Arc::new(AtomicBool::new(false));
        let err = appends
            .append(keep.clone(), |c| {
                c.execute("INSERT INTO t (id, n) VALUES ('a', 1)", [])?;
                c.execute("INSERT INTO missing (id) VALUES ('b')", [])
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no such table: missing"), "{err}");
        assert_eq!(count(&appends), 0);
        // The connection is usable after the failure.
        appends
            .append(keep, insert(vec![("c".to_string(), 3)]))
            .await
            .unwrap();
        assert_eq!(count(&appends), 1);
    }
}
