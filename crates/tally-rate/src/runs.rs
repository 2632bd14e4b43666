//! Rating runs: writing a run's lines, committing it, and the catalog that
//! says which run's lines are current for which instants.
//!
//! A run writes its line files under `rated/<run_id>/` first; only then, in
//! one transaction, does it take over its range in `rated_coverage` (cutting
//! older runs' ranges) and become `complete`. A reader therefore sees either
//! the old lines of a period or the new ones, never a mix. A run that fails
//! is marked `failed`; a process killed midway leaves its row `running`
//! and its partial files unread (they hold no coverage).

use std::time::Instant;

use chrono::{DateTime, Utc};
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_core::RatedLine;
use tally_core::rollup::CellInput;
use tally_core::summary_levels::WholeMonthLevels;
use tally_db::Database;
use tally_store::objects::RawObjects;

use crate::cells::{self, CellWriter};
use crate::job::{
    self, LineSink, RatingConfig, RatingError, RatingRequest, ResourceLines, RunTotals,
};
use crate::lines::{LineBatchBuilder, LineRow};

/// A run as the catalog records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RatingRun {
    /// The run id.
    pub run_id: String,
    /// First instant rated.
    pub from: DateTime<Utc>,
    /// End of the range (exclusive).
    pub to: DateTime<Utc>,
    /// Rating period length in seconds.
    pub period_seconds: i64,
    /// The plan that priced it ('' if none).
    pub plan_id: String,
    /// `running`, `complete` or `failed`.
    pub status: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Counts and the total amount.
    #[serde(flatten)]
    pub totals: RunTotals,
    /// The plan's currency ('' if none).
    pub currency: String,
    /// Raw segments read.
    pub segments: Vec<String>,
    /// Line files written, relative to the rated store.
    pub files: Vec<String>,
    /// Why it failed, if it did.
    pub message: Option<String>,
    /// Wall time of the run, seconds (not stored; 0 when read back).
    #[serde(skip_serializing_if = "is_zero")]
    pub seconds: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn instant(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

#[derive(sqlx::FromRow)]
struct RunRow {
    run_id: String,
    from_us: i64,
    to_us: i64,
    period_seconds: i64,
    plan_id: String,
    status: String,
    started_at_us: i64,
    finished_at_us: Option<i64>,
    records_read: i64,
    duplicates: i64,
    line_count: i64,
    unpriced_lines: i64,
    error_lines: i64,
    amount: String,
    currency: String,
    segments: String,
    files: String,
    message: Option<String>,
    carried_from_us: Option<i64>,
}

impl From<RunRow> for RatingRun {
    fn from(r: RunRow) -> RatingRun {
        RatingRun {
            run_id: r.run_id,
            from: instant(r.from_us),
            to: instant(r.to_us),
            period_seconds: r.period_seconds,
            plan_id: r.plan_id,
            status: r.status,
            started_at: instant(r.started_at_us),
            finished_at: r.finished_at_us.map(instant),
            totals: RunTotals {
                records_read: r.records_read as u64,
                duplicates: r.duplicates as u64,
                lines: r.line_count as u64,
                unpriced_lines: r.unpriced_lines as u64,
                error_lines: r.error_lines as u64,
                amount: r.amount.parse().unwrap_or_default(),
                carried_from: r.carried_from_us.map(instant),
            },
            currency: r.currency,
            segments: serde_json::from_str(&r.segments).unwrap_or_default(),
            files: serde_json::from_str(&r.files).unwrap_or_default(),
            message: r.message,
            seconds: 0.0,
        }
    }
}

macro_rules! run_columns {
    () => {
        "run_id, from_us, to_us, period_seconds, plan_id, status, started_at_us, finished_at_us, records_read, duplicates, line_count, unpriced_lines, error_lines, amount, currency, segments, files, message, carried_from_us"
    };
}

/// Recent runs, newest first.
pub async fn list_runs(db: &Database, limit: i64) -> Result<Vec<RatingRun>, RatingError> {
    let rows: Vec<RunRow> = sqlx::query_as(concat!(
        "SELECT ",
        run_columns!(),
        " FROM rating_runs ORDER BY started_at_us DESC, run_id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(RatingRun::from).collect())
}

/// One run.
pub async fn get_run(db: &Database, run_id: &str) -> Result<Option<RatingRun>, RatingError> {
    let row: Option<RunRow> = sqlx::query_as(concat!(
        "SELECT ",
        run_columns!(),
        " FROM rating_runs WHERE run_id = $1"
    ))
    .bind(run_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(RatingRun::from))
}

/// A stretch of time whose current lines come from one run's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The run.
    pub run_id: String,
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
    /// The run's line files.
    pub files: Vec<String>,
}

/// Coverage overlapping `[from, to)`, in time order.
pub async fn coverage(
    db: &Database,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Coverage>, RatingError> {
    let rows: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT c.run_id, c.from_us, c.to_us, r.files FROM rated_coverage c \
         JOIN rating_runs r ON r.run_id = c.run_id \
         WHERE c.to_us > $1 AND c.from_us < $2 ORDER BY c.from_us",
    )
    .bind(from.timestamp_micros())
    .bind(to.timestamp_micros())
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(run_id, f, t, files)| Coverage {
            run_id,
            from: instant(f),
            to: instant(t),
            files: serde_json::from_str(&files).unwrap_or_default(),
        })
        .collect())
}

/// Writes a partition's lines to one Parquet file, streaming (multipart
/// upload on object stores), in row groups of `ROW_GROUP` lines.
pub struct FileSink {
    rated: RawObjects,
    path: String,
    writer: Option<AsyncArrowWriter<BufWriter>>,
    rows: LineBatchBuilder,
    written: u64,
    cells: Option<CellWriter>,
}

const ROW_GROUP: usize = 65_536;
/// The line-file columns that keep row-group statistics.
const PRUNED_BY: [&str; 5] = [
    "project_id",
    "resource_id",
    "meter",
    "period_start",
    "period_end",
];
/// The line-file columns written without a dictionary (see `write_buffer`).
const UNIQUE_TEXT: [&str; 2] = ["quantity", "amount"];
const WRITE_BATCH: usize = 8_192;

impl FileSink {
    /// A sink writing `path` in the rated store (created on the first line).
    pub fn new(rated: RawObjects, path: String) -> FileSink {
        FileSink {
            rated,
            path,
            writer: None,
            rows: LineBatchBuilder::with_capacity(WRITE_BATCH),
            written: 0,
            cells: None,
        }
    }

    /// Also adds the lines into daily cells (what summaries read).
    pub fn with_cells(mut self, cells: CellWriter) -> FileSink {
        self.cells = Some(cells);
        self
    }

    async fn write_buffer(&mut self) -> Result<(), RatingError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let files = |e: String| RatingError::Files(e);
        if self.writer.is_none() {
            // Statistics only where a reader of the files would prune by
            // them (whose lines, which meter, when): min/max of the other
            // text columns cost a string comparison per value and per
            // column, and nothing selects lines by amount text or JSON.
            let mut props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(
                    ZstdLevel::try_new(1).expect("valid level"),
                ))
                .set_max_row_group_row_count(Some(ROW_GROUP))
                .set_statistics_enabled(EnabledStatistics::None);
            // Quantities and amounts repeat within a gauge meter's hours
            // but not in byte counters (a 10 M-record month's file: 1.5 M
            // distinct quantities in 5.2 M lines). Written plain, zstd
            // keeps them smaller than dictionary indices did (quantity
            // 23.1 → 18.1 MB, amount 12.0 → 11.4 MB), and no value is
            // hashed into a dictionary.
            for column in UNIQUE_TEXT {
                props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
            }
            for column in PRUNED_BY {
                props = props.set_column_statistics_enabled(
                    ColumnPath::from(column),
                    EnabledStatistics::Chunk,
                );
            }
            let props = props.build();
            let object = BufWriter::new(self.rated.object_store(), self.rated.location(&self.path));
            self.writer = Some(
                AsyncArrowWriter::try_new(object, crate::lines::schema(), Some(props))
                    .map_err(|e| files(e.to_string()))?,
            );
        }
        self.written += self.rows.len() as u64;
        let batch = self.rows.finish().map_err(|e| files(e.to_string()))?;
        self.writer
            .as_mut()
            .expect("created above")
            .write(&batch)
            .await
            .map_err(|e| files(e.to_string()))
    }

    /// Finishes the file; returns its path if any line was written.
    pub async fn close(self) -> Result<Option<String>, RatingError> {
        Ok(self.close_with_levels().await?.0)
    }

    /// Finishes the file; returns its path if any line was written, and
    /// the levels of the whole months its cells add up to (if it keeps
    /// cells).
    pub async fn close_with_levels(
        mut self,
    ) -> Result<(Option<String>, Option<WholeMonthLevels>), RatingError> {
        self.finish_file().await?;
        let levels = self.cells.as_mut().map(CellWriter::take_levels);
        Ok(((self.written > 0).then_some(self.path), levels))
    }

    /// Writes what is buffered, closes the file and syncs it; the cells'
    /// last write too. Lines added afterwards would start a new file over
    /// the old one, so `close` is all that may follow.
    async fn finish_file(&mut self) -> Result<(), RatingError> {
        self.write_buffer().await?;
        if let Some(cells) = &mut self.cells {
            cells.flush().await?;
        }
        if let Some(w) = self.writer.take() {
            w.close()
                .await
                .map_err(|e| RatingError::Files(e.to_string()))?;
            self.rated
                .sync_local(&self.path)
                .map_err(|e| RatingError::Files(e.to_string()))?;
        }
        Ok(())
    }
}

impl FileSink {
    /// Writes lines made elsewhere than in a rating run (benchmarks, tools).
    pub async fn accept_rated(&mut self, lines: &[RatedLine]) -> Result<(), RatingError> {
        for l in lines {
            self.add(&CellInput::of(l), &LineRow::of(l)).await?;
        }
        Ok(())
    }

    /// Adds one line: to its daily cell, if cells are kept, and to the line
    /// file, writing a batch once one is full.
    async fn add(&mut self, cell: &CellInput<'_>, row: &LineRow<'_>) -> Result<(), RatingError> {
        if let Some(cells) = &mut self.cells {
            cells.add_line(cell).await?;
        }
        self.rows.append(row);
        if self.rows.len() >= WRITE_BATCH {
            self.write_buffer().await?;
        }
        Ok(())
    }
}

impl LineSink for FileSink {
    async fn accept(&mut self, lines: ResourceLines<'_>) -> Result<(), RatingError> {
        for l in &lines.lines {
            self.add(&l.cell_input(&lines), &l.row(&lines)).await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), RatingError> {
        self.finish_file().await
    }
}

/// Rates `request` and makes its lines the current ones for its range.
pub async fn run_and_commit(
    db: &Database,
    raw: &RawObjects,
    rated: &RawObjects,
    config: &RatingConfig,
    request: &RatingRequest,
) -> Result<RatingRun, RatingError> {
    let started = Instant::now();
    let now = Utc::now();
    let run_id = format!(
        "run-{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let window = request.window;
    let default_plan = request.plans.default_plan();
    let plan_id = default_plan.map(|p| p.id.clone()).unwrap_or_default();
    let currency = default_plan
        .map(|p| p.currency.code().to_string())
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO rating_runs (run_id, from_us, to_us, period_seconds, plan_id, status, started_at_us, currency) \
         VALUES ($1, $2, $3, $4, $5, 'running', $6, $7)",
    )
    .bind(&run_id)
    .bind(window.from.timestamp_micros())
    .bind(window.to.timestamp_micros())
    .bind(window.period.num_seconds())
    .bind(&plan_id)
    .bind(now.timestamp_micros())
    .bind(&currency)
    .execute(&db.pool)
    .await?;

    let outcome = async {
        let (totals, segments, sinks) = job::rate(db, raw, config, request, |p| {
            FileSink::new(rated.clone(), format!("{run_id}/lines-{p:03}.parquet")).with_cells(
                CellWriter::new(db.clone(), run_id.clone(), window.from, window.to),
            )
        })
        .await?;
        let mut files = Vec::new();
        let mut levels: Option<WholeMonthLevels> = None;
        for sink in sinks {
            let (file, part) = sink.close_with_levels().await?;
            files.extend(file);
            match (&mut levels, part) {
                (Some(all), Some(part)) => all.merge(part),
                (None, part) => levels = part,
                (Some(_), None) => {}
            }
        }
        Ok::<_, RatingError>((totals, segments, files, levels))
    }
    .await;

    let (mut totals, segments, files, levels) = match outcome {
        Ok(o) => o,
        Err(e) => {
            if let Err(cleanup) = cells::delete(db, &run_id).await {
                tracing::warn!(error = %cleanup, run_id, "could not delete a failed run's cells");
            }
            sqlx::query(
                "UPDATE rating_runs SET status = 'failed', finished_at_us = $1, message = $2 WHERE run_id = $3",
            )
            .bind(Utc::now().timestamp_micros())
            .bind(e.to_string())
            .bind(&run_id)
            .execute(&db.pool)
            .await?;
            return Err(e);
        }
    };
    totals.amount = totals.amount.normalize();
    let finished = Utc::now();
    let (from_us, to_us) = (window.from.timestamp_micros(), window.to.timestamp_micros());
    let committing = Instant::now();
    let mut tx = db.begin_write().await?;
    // The days whose current usage changes are marked for the summary
    // levels in the same transaction that changes coverage, except those
    // of whole months, whose levels the run added up itself (written
    // below, once the coverage is the run's).
    crate::levels::lock(&mut tx, db.backend).await?;
    let whole_months = levels.as_ref().map_or(&[][..], |l| l.months());
    let marked_from = whole_months.first().map_or(to_us, |m| m.0);
    let marked_to = whole_months.last().map_or(to_us, |m| m.1);
    crate::levels::mark_in(&mut tx, db.backend, from_us, marked_from).await?;
    crate::levels::mark_in(&mut tx, db.backend, marked_to, to_us).await?;
    let overlapping: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT run_id, from_us, to_us FROM rated_coverage WHERE to_us > $1 AND from_us < $2",
    )
    .bind(from_us)
    .bind(to_us)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM rated_coverage WHERE to_us > $1 AND from_us < $2")
        .bind(from_us)
        .bind(to_us)
        .execute(&mut *tx)
        .await?;
    let insert = "INSERT INTO rated_coverage (run_id, from_us, to_us) VALUES ($1, $2, $3)";
    let mut cut_mid_day = Vec::new();
    for (old, f, t) in overlapping {
        // An older run keeping part of a day loses the cell of that day;
        // marking its cells incomplete has them rebuilt from its files.
        if (f < from_us && !at_midnight(from_us)) || (t > to_us && !at_midnight(to_us)) {
            cut_mid_day.push(old.clone());
        }
        if f < from_us {
            sqlx::query(insert)
                .bind(&old)
                .bind(f)
                .bind(from_us)
                .execute(&mut *tx)
                .await?;
        }
        if t > to_us {
            sqlx::query(insert)
                .bind(&old)
                .bind(to_us)
                .bind(t)
                .execute(&mut *tx)
                .await?;
        }
    }
    sqlx::query(insert)
        .bind(&run_id)
        .bind(from_us)
        .bind(to_us)
        .execute(&mut *tx)
        .await?;
    for old in &cut_mid_day {
        sqlx::query("DELETE FROM usage_rollup_runs WHERE run_id = $1")
            .bind(old)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("INSERT INTO usage_rollup_runs (run_id) VALUES ($1)")
        .bind(&run_id)
        .execute(&mut *tx)
        .await?;
    let level_rows = match &levels {
        Some(levels) => crate::levels::write_whole_months(&mut tx, db.backend, levels).await?,
        None => 0,
    };
    let json = |v: &Vec<String>| serde_json::to_string(v).expect("strings serialize");
    sqlx::query(
        "UPDATE rating_runs SET status = 'complete', finished_at_us = $1, records_read = $2, duplicates = $3, \
         line_count = $4, unpriced_lines = $5, error_lines = $6, amount = $7, segments = $8, files = $9, \
         carried_from_us = $10 WHERE run_id = $11",
    )
    .bind(finished.timestamp_micros())
    .bind(totals.records_read as i64)
    .bind(totals.duplicates as i64)
    .bind(totals.lines as i64)
    .bind(totals.unpriced_lines as i64)
    .bind(totals.error_lines as i64)
    .bind(totals.amount.normalize().to_string())
    .bind(json(&segments))
    .bind(json(&files))
    .bind(totals.carried_from.map(|t| t.timestamp_micros()))
    .bind(&run_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        seconds = committing.elapsed().as_secs_f64(),
        level_rows,
        "rating run committed"
    );
    let refreshing = Instant::now();
    if !cut_mid_day.is_empty() {
        // Also done by every summary before it answers; doing it now keeps
        // that first summary fast.
        if let Err(e) = cells::ensure_current(db, rated).await {
            tracing::warn!(error = %e, "could not rebuild the cells of runs cut mid-day");
        }
    }
    // Also done by every summary before it answers; doing it now keeps
    // that first summary fast.
    match crate::levels::refresh(db).await {
        Ok(days) => tracing::info!(
            seconds = refreshing.elapsed().as_secs_f64(),
            days,
            "summary levels of the run's other days recomputed"
        ),
        Err(e) => tracing::warn!(error = %e, "could not recompute the summary levels"),
    }
    if let Err(e) = delete_superseded(db, rated, finished - config.superseded_grace).await {
        // The run is committed; leftover files only cost disk and are
        // retried after the next run.
        tracing::warn!(error = %e, "could not delete superseded line files");
    }

    Ok(RatingRun {
        run_id,
        from: window.from,
        to: window.to,
        period_seconds: window.period.num_seconds(),
        plan_id,
        status: "complete".into(),
        started_at: now,
        finished_at: Some(finished),
        totals,
        currency,
        segments,
        files,
        message: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn at_midnight(us: i64) -> bool {
    us.rem_euclid(86_400_000_000) == 0
}

/// Deletes the line files of complete runs that no longer hold any
/// coverage and finished before `before`, and records that they are gone.
/// Returns how many runs were cleaned.
pub async fn delete_superseded(
    db: &Database,
    rated: &RawObjects,
    before: DateTime<Utc>,
) -> Result<usize, RatingError> {
    let runs: Vec<(String, String)> = sqlx::query_as(
        "SELECT run_id, files FROM rating_runs WHERE status = 'complete' AND files <> '[]' \
         AND finished_at_us < $1 AND run_id NOT IN (SELECT run_id FROM rated_coverage)",
    )
    .bind(before.timestamp_micros())
    .fetch_all(&db.pool)
    .await?;
    for (run_id, files) in &runs {
        let files: Vec<String> = serde_json::from_str(files).unwrap_or_default();
        for f in &files {
            rated
                .delete(f)
                .await
                .map_err(|e| RatingError::Files(format!("cannot delete {f}: {e}")))?;
        }
        if let Some(root) = rated.local_root() {
            let _ = std::fs::remove_dir(root.join(run_id));
        }
        cells::delete(db, run_id).await?;
        sqlx::query(
            "UPDATE rating_runs SET files = '[]', message = 'superseded: line files deleted' WHERE run_id = $1",
        )
        .bind(run_id)
        .execute(&db.pool)
        .await?;
    }
    Ok(runs.len())
}

/// Sums the current lines of `[from, to)` per (project, meter): what
/// `tally plan simulate` compares a candidate plan against.
pub type Totals = std::collections::BTreeMap<(String, String), Decimal>;

/// Reads every current line file overlapping the range, keeping lines whose
/// period starts inside the range and inside the file's coverage.
pub async fn read_current_lines(
    db: &Database,
    rated: &RawObjects,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    mut each: impl FnMut(RatedLine),
) -> Result<(), RatingError> {
    for cov in coverage(db, from, to).await? {
        let (lo, hi) = (cov.from.max(from), cov.to.min(to));
        for file in &cov.files {
            read_line_file(rated, file, |line| {
                if line.period_start >= lo && line.period_start < hi {
                    each(line);
                }
            })
            .await?;
        }
    }
    Ok(())
}

/// Reads every line of one line file, in file order.
pub async fn read_line_file(
    rated: &RawObjects,
    file: &str,
    mut each: impl FnMut(RatedLine),
) -> Result<(), RatingError> {
    let bytes = rated
        .get(file)
        .await
        .map_err(|e| RatingError::Files(e.to_string()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| RatingError::Files(format!("{file}: {e}")))?;
    for batch in reader {
        let batch = batch.map_err(|e| RatingError::Files(e.to_string()))?;
        for line in crate::lines::from_batch(&batch)
            .map_err(|e| RatingError::Files(format!("{file}: {e}")))?
        {
            each(line);
        }
    }
    Ok(())
}

/// Keeps a partition's totals per (project, meter) instead of writing files.
#[derive(Default)]
pub struct TotalsSink {
    /// Amount per (project, meter).
    pub totals: Totals,
}

impl LineSink for TotalsSink {
    async fn accept(&mut self, lines: ResourceLines<'_>) -> Result<(), RatingError> {
        // A resource's lines come sorted by meter: one map entry (and one
        // pair of keys made) per meter, not per line.
        for same_meter in lines
            .lines
            .chunk_by(|a, b| a.metered.meter == b.metered.meter)
        {
            let amount: Decimal = same_meter.iter().map(|l| l.price.amount).sum();
            let key = (
                lines.project.to_string(),
                same_meter[0].metered.meter.to_string(),
            );
            *self.totals.entry(key).or_default() += amount;
        }
        Ok(())
    }
}

/// Rates `request` without storing anything; returns amount per (project,
/// meter) and the run totals.
pub async fn simulate(
    db: &Database,
    raw: &RawObjects,
    config: &RatingConfig,
    request: &RatingRequest,
) -> Result<(Totals, RunTotals), RatingError> {
    let (run_totals, _, sinks) =
        job::rate(db, raw, config, request, |_| TotalsSink::default()).await?;
    let mut totals = Totals::new();
    for s in sinks {
        for (k, v) in s.totals {
            *totals.entry(k).or_default() += v;
        }
    }
    Ok((totals, run_totals))
}
