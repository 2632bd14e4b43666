//! Daily cost cells of a rating run, stored beside its line files.
//!
//! A run adds its lines into [`DailyCells`] as it rates and writes them to
//! `usage_rollups` under its run id; they count in summaries only once the
//! run's coverage holds them (see `0007_show.sql`). This module writes,
//! rebuilds and deletes cells; the show module reads them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use tally_core::rollup::{CellInput, DailyCell, DailyCells};
use tally_core::summary_levels::WholeMonthLevels;
use tally_db::Database;
use tally_store::objects::RawObjects;

use crate::job::RatingError;

/// Cells held in memory before they are written: bounds a run's memory
/// whatever the number of resources.
const FLUSH_CELLS: usize = 20_000;
const CELL_COLUMNS: usize = 13;
const CELL_COLUMN_NAMES: &str = "run_id, from_us, to_us, project_id, resource_id, meter, unit, currency, \
     attributes, quantity_micro, amount_nano, line_count, error_count";
/// Resource-month rows a partition adds up in memory for the whole months
/// of its run (see [`WholeMonthLevels`]) before it leaves them to the
/// stored cells: about 300 bytes each, so at most ~150 MiB per partition.
/// The benchmark's month of 2,800 instances has 20,638 in all.
const LEVEL_ROWS: usize = 500_000;

/// Collects a partition's cells and writes them as they accumulate.
///
/// A write runs as its own task while the partition goes on rating: on
/// SQLite the inserts are a few seconds of a month's run, spent on sqlx's
/// database thread, and the worker waiting for them would leave a core
/// idle. At most one write per partition is in flight, so memory stays
/// bounded.
pub struct CellWriter {
    db: Database,
    run_id: String,
    cells: DailyCells,
    levels: WholeMonthLevels,
    writing: Option<tokio::task::JoinHandle<Result<(), RatingError>>>,
    /// Set when the writer is dropped unflushed: a write in flight on
    /// SQLite runs on a blocking thread that aborting cannot stop, so it
    /// reads this before it commits.
    withdrawn: Arc<AtomicBool>,
}

impl CellWriter {
    /// A writer for `run_id`'s lines over `[from, to)`.
    pub fn new(db: Database, run_id: String, from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        CellWriter {
            db,
            run_id,
            cells: DailyCells::new(from, to),
            levels: WholeMonthLevels::new(
                from.timestamp_micros(),
                to.timestamp_micros(),
                LEVEL_ROWS,
            ),
            writing: None,
            withdrawn: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Adds a line; starts writing the cells held once there are many.
    pub async fn add_line(&mut self, line: &CellInput<'_>) -> Result<(), RatingError> {
        self.cells.add_line(line);
        if self.cells.len() >= FLUSH_CELLS {
            self.start_write().await?;
        }
        Ok(())
    }

    /// Waits for the write in flight, if any, then starts writing the cells
    /// held.
    async fn start_write(&mut self) -> Result<(), RatingError> {
        self.finish_write().await?;
        if self.cells.is_empty() {
            return Ok(());
        }
        let cells = self
            .cells
            .drain()
            .map_err(|e| RatingError::Files(e.to_string()))?;
        for cell in &cells {
            self.levels.add(cell);
        }
        let (db, run_id) = (self.db.clone(), self.run_id.clone());
        let withdrawn = self.withdrawn.clone();
        self.writing = Some(tokio::spawn(async move {
            insert_unless(&db, run_id, cells, withdrawn).await
        }));
        Ok(())
    }

    async fn finish_write(&mut self) -> Result<(), RatingError> {
        match self.writing.take() {
            None => Ok(()),
            Some(w) => w
                .await
                .map_err(|e| RatingError::Files(format!("writing daily cells failed: {e}")))?,
        }
    }

    /// Writes every cell held, and waits until every write is done.
    pub async fn flush(&mut self) -> Result<(), RatingError> {
        self.start_write().await?;
        self.finish_write().await
    }

    /// The levels of the run's whole months added from the cells written
    /// so far (all of them after [`CellWriter::flush`]).
    pub fn take_levels(&mut self) -> WholeMonthLevels {
        let empty = WholeMonthLevels::new(0, 0, 0);
        std::mem::replace(&mut self.levels, empty)
    }
}

impl Drop for CellWriter {
    /// A writer dropped before `flush` belongs to a run that failed: its
    /// write in flight is stopped (its transaction rolls back) so that it
    /// cannot land after the run's cells were deleted.
    fn drop(&mut self) {
        self.withdrawn.store(true, Ordering::SeqCst);
        if let Some(w) = self.writing.take() {
            w.abort();
        }
    }
}

/// Writes cells of `run_id`. Cells of one key may be written twice (two
/// flushes of a partition); readers add them up.
pub async fn insert(
    db: &Database,
    run_id: String,
    cells: Vec<DailyCell>,
) -> Result<(), RatingError> {
    insert_unless(db, run_id, cells, Arc::new(AtomicBool::new(false))).await
}

/// [`insert`], rolled back instead of committed if `withdrawn` is set by
/// the time the cells are written.
async fn insert_unless(
    db: &Database,
    run_id: String,
    cells: Vec<DailyCell>,
    withdrawn: Arc<AtomicBool>,
) -> Result<(), RatingError> {
    if let Some(appends) = db.sqlite_appends() {
        // One compiled statement, each value bound from the cell where it
        // is: a month's 438,243 cells cost sqlx's Any driver about as much
        // as SQLite's B-tree inserts did (docs/benchmarks.md).
        appends
            .append(withdrawn, move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "INSERT INTO usage_rollups ({CELL_COLUMN_NAMES}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ))?;
                for c in &cells {
                    let k = &c.key;
                    stmt.execute(tally_db::rusqlite::params![
                        run_id,
                        k.from_us,
                        k.to_us,
                        k.project_id,
                        k.resource_id,
                        k.meter,
                        k.unit,
                        k.currency,
                        k.attributes,
                        c.quantity_micro,
                        c.amount_nano,
                        c.line_count,
                        c.error_count,
                    ])?;
                }
                Ok(())
            })
            .await?;
        return Ok(());
    }
    // PostgreSQL pays per round trip: many rows per statement.
    let mut tx = db.begin_write().await?;
    for chunk in cells.chunks(1000) {
        let sql = format!(
            "INSERT INTO usage_rollups ({CELL_COLUMN_NAMES}) VALUES {}",
            tally_db::values_placeholders(db.backend, chunk.len(), CELL_COLUMNS)
        );
        // Only placeholders are generated into this text.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for c in chunk {
            q = q
                .bind(&run_id)
                .bind(c.key.from_us)
                .bind(c.key.to_us)
                .bind(&c.key.project_id)
                .bind(&c.key.resource_id)
                .bind(&c.key.meter)
                .bind(&c.key.unit)
                .bind(&c.key.currency)
                .bind(&c.key.attributes)
                .bind(c.quantity_micro)
                .bind(c.amount_nano)
                .bind(c.line_count)
                .bind(c.error_count);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Forgets every cell of `run_id` (a failed or superseded run).
pub async fn delete(db: &Database, run_id: &str) -> Result<(), RatingError> {
    let mut tx = db.begin_write().await?;
    sqlx::query("DELETE FROM usage_rollups WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM usage_rollup_runs WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Builds the cells of `run_id` for `[from, to)` from its line files.
/// Used for the part of a day left to an older run when a newer one cuts
/// it mid-day, and for runs committed before cells existed.
pub async fn build_from_files(
    db: &Database,
    rated: &RawObjects,
    run_id: &str,
    files: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), RatingError> {
    let mut cells = DailyCells::new(from, to);
    for file in files {
        crate::runs::read_line_file(rated, file, |line| {
            if line.period_start >= from && line.period_start < to {
                cells.add(&line);
            }
        })
        .await?;
    }
    let cells = cells
        .drain()
        .map_err(|e| RatingError::Files(e.to_string()))?;
    insert(db, run_id.to_string(), cells).await
}

/// Makes sure every run that holds coverage has its cells: runs missing
/// from `usage_rollup_runs` (committed before cells existed, or whose
/// cells were lost) get theirs built from their line files. Returns how
/// many runs were built.
pub async fn ensure_current(db: &Database, rated: &RawObjects) -> Result<usize, RatingError> {
    let missing: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT r.run_id, r.files FROM rated_coverage c JOIN rating_runs r ON r.run_id = c.run_id \
         WHERE NOT EXISTS (SELECT 1 FROM usage_rollup_runs u WHERE u.run_id = c.run_id)",
    )
    .fetch_all(&db.pool)
    .await?;
    for (run_id, files) in &missing {
        let files: Vec<String> = serde_json::from_str(files).unwrap_or_default();
        // Whatever a crash left behind is replaced, not added to.
        sqlx::query("DELETE FROM usage_rollups WHERE run_id = $1")
            .bind(run_id)
            .execute(&db.pool)
            .await?;
        let pieces: Vec<(i64, i64)> =
            sqlx::query_as("SELECT from_us, to_us FROM rated_coverage WHERE run_id = $1")
                .bind(run_id)
                .fetch_all(&db.pool)
                .await?;
        for (f, t) in pieces {
            let instant = |us| DateTime::from_timestamp_micros(us).unwrap_or_default();
            build_from_files(db, rated, run_id, &files, instant(f), instant(t)).await?;
            // These cells now count: the levels above them must see them.
            crate::levels::mark(db, f, t).await?;
        }
        sqlx::query("INSERT INTO usage_rollup_runs (run_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(run_id)
            .execute(&db.pool)
            .await?;
    }
    Ok(missing.len())
}
