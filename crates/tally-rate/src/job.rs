//! The rating job: Parquet segments of a period → rated lines.
//!
//! Stage 1 (DataFusion): scan the period's segments (plus a short look-back
//! for gauges and states carried into the period), replace each row's
//! (source, id) by its 128-bit record key, and route rows by a hash of
//! (project, resource) into buckets sized to the memory budget
//! ([`crate::shuffle`]; no files when one bucket holds the period).
//! Stage 2: one worker per core takes its buckets in turn, puts each
//! resource's rows together, meters the resource ([`crate::aggregate`]),
//! prices it ([`tally_price::PricePlan::price`]) and hands the lines to a
//! [`LineSink`]: Parquet files for a real run, a table of totals for a
//! simulation. Nothing ever holds a whole period.
//!
//! Determinism: bucket numbers come from XXH3, not from the engine;
//! [`crate::aggregate`] orders each resource's records itself; each worker
//! writes its buckets in order. Two runs over the same segments, meters,
//! plan and settings therefore write byte-identical files.

use std::collections::BTreeMap;

// foldhash, not SipHash: these maps are probed once per scanned row.
use hashbrown::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Decimal128Array, DictionaryArray, RecordBatch, StringArray, StringViewArray,
    TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use chrono::{DateTime, Duration, Utc};
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{ExecutionPlan, execute_stream_partitioned};
use datafusion::prelude::{
    DataFrame, Expr, ParquetReadOptions, SessionConfig, SessionContext, col, in_list, lit,
};
use futures::StreamExt;
use rust_decimal::Decimal;
use tally_core::rollup::CellInput;
use tally_core::{Attributes, MeterKind, RatedLine};
use tally_db::Database;
use tally_price::{LinePrice, PlanBook, PricePlan, PricedBy};
use tally_store::catalog::{self, SegmentEntry};
use tally_store::objects::RawObjects;

use crate::aggregate::{MeteredLine, Metering, RatingWindow, RawUsage, later, marks_deletion};
use crate::carry::{self, CarriedRecord};
use crate::lines::{LineRow, RuleText, SegmentNames};
use crate::meters::{Aggregation, MeterSet};
use crate::shuffle::{self, BucketWriter};

/// Errors that stop a rating run. Per-line problems (a rule failing on one
/// line) do not: they are recorded on the line.
#[derive(Debug, thiserror::Error)]
pub enum RatingError {
    // The wrapped errors are shown in the message and deliberately not
    // exposed as `source()`: callers printing the chain would repeat them.
    /// The query engine failed.
    #[error("rating query failed: {0}")]
    Engine(datafusion::error::DataFusionError),
    /// Arrow refused an operation on scanned rows.
    #[error("rating computation failed: {0}")]
    Arrow(datafusion::arrow::error::ArrowError),
    /// The billing database failed.
    #[error("billing database: {0}")]
    Database(sqlx::Error),
    /// Appending daily cells to the billing database failed.
    #[error("{0}")]
    Append(#[from] tally_db::AppendError),
    /// Writing or reading line files failed.
    #[error("rated-line files: {0}")]
    Files(String),
    /// A segment holds something the store would never write.
    #[error("segment {segment} is unreadable: {message}")]
    Segment {
        /// The segment path.
        segment: String,
        /// What is wrong.
        message: String,
    },
}

impl From<datafusion::error::DataFusionError> for RatingError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        RatingError::Engine(e)
    }
}

impl From<datafusion::arrow::error::ArrowError> for RatingError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        RatingError::Arrow(e)
    }
}

impl From<sqlx::Error> for RatingError {
    fn from(e: sqlx::Error) -> Self {
        RatingError::Database(e)
    }
}

/// How the job uses the machine.
#[derive(Debug, Clone)]
pub struct RatingConfig {
    /// Workers rating in parallel (default: the number of cores).
    pub partitions: usize,
    /// Memory budget: DataFusion's scan pool, and what sizes the shuffle
    /// buckets (one bucket per worker must fit).
    pub memory_limit: usize,
    /// Where shuffle buckets are written (removed after each run).
    pub spill_dir: PathBuf,
    /// How far before a line explain looks for the records carried into
    /// it. (Rating itself starts from the latest carry snapshot, or the
    /// whole history: see the `carry` module.)
    pub carry_lookback: Duration,
    /// How long the line files of a run whose lines have all been replaced
    /// are kept (for readers still holding the old coverage) before they
    /// are deleted.
    pub superseded_grace: Duration,
    /// Rows per batch read.
    pub batch_size: usize,
}

impl RatingConfig {
    /// Defaults sized for a laptop, spilling under `spill_dir`.
    pub fn new(spill_dir: PathBuf) -> RatingConfig {
        RatingConfig {
            partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            memory_limit: 1 << 30,
            spill_dir,
            carry_lookback: Duration::days(2),
            superseded_grace: Duration::hours(1),
            batch_size: 8192,
        }
    }
}

/// What one run produced, for the caller and the run catalog.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunTotals {
    /// Raw records inside the range that were read.
    pub records_read: u64,
    /// Of those, copies of an id already counted.
    pub duplicates: u64,
    /// Lines produced.
    pub lines: u64,
    /// Lines no plan rule priced.
    pub unpriced_lines: u64,
    /// Lines a rule failed on.
    pub error_lines: u64,
    /// Sum of the amounts of lines in the default plan's currency, full
    /// precision (lines of account plans in other currencies are counted
    /// in `lines` but not summed here: amounts of two currencies never add).
    pub amount: Decimal,
    /// The instant of the carry snapshot the run started from; absent when
    /// it read the whole history before its range (or carries nothing).
    pub carried_from: Option<DateTime<Utc>>,
}

impl RunTotals {
    fn add(&mut self, other: &RunTotals) {
        self.records_read += other.records_read;
        self.duplicates += other.duplicates;
        self.lines += other.lines;
        self.unpriced_lines += other.unpriced_lines;
        self.error_lines += other.error_lines;
        self.amount += other.amount;
    }
}

/// Where a partition's lines go.
pub trait LineSink: Send {
    /// Takes the lines of one resource, in order.
    fn accept(
        &mut self,
        lines: ResourceLines<'_>,
    ) -> impl std::future::Future<Output = Result<(), RatingError>> + Send;

    /// Called once by the partition's worker after its last lines, so that
    /// whatever the sink still has to write (the end of a file) is written
    /// while the other partitions go on rating, not after all of them.
    fn finish(&mut self) -> impl std::future::Future<Output = Result<(), RatingError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// One resource's priced lines, as the rating job hands them to a sink.
#[derive(Debug)]
pub struct ResourceLines<'a> {
    /// The project that pays for the resource.
    pub project: &'a str,
    /// The resource.
    pub resource: &'a str,
    /// Its lines, sorted by meter, group and period.
    pub lines: Vec<PricedLine>,
    /// The run's segment list, which the lines' segment indices point into.
    pub segment_paths: &'a [String],
}

/// A metered line and what priced it: a [`RatedLine`] without its copies
/// of the project, resource, plan id, currency and rule name, which the
/// sink writes out (or not) as it needs.
#[derive(Debug, Clone)]
pub struct PricedLine {
    /// The line before pricing.
    pub metered: MeteredLine,
    /// The plan in force for the project at the period's start, if any.
    pub plan: Option<Arc<PricePlan>>,
    /// The price; unpriced (version 0, amount 0) when there is no plan or
    /// the metered line is in error.
    pub price: LinePrice,
}

impl PricedLine {
    /// Why the line has no amount, if it has none for a reason.
    pub fn error(&self) -> Option<&str> {
        self.metered
            .error
            .as_deref()
            .or(self.price.error.as_deref())
    }

    /// The currency of its amount; empty when no plan priced it.
    pub fn currency(&self) -> &str {
        self.plan.as_ref().map_or("", |p| p.currency.code())
    }

    /// Whether no rule priced it.
    pub fn is_unpriced(&self) -> bool {
        self.price.rule == PricedBy::Nothing
    }

    /// The line as a row of the line file.
    pub fn row<'a>(&'a self, of: &ResourceLines<'a>) -> LineRow<'a> {
        let m = &self.metered;
        LineRow {
            project_id: of.project,
            resource_id: of.resource,
            meter: &m.meter,
            group: &m.group,
            period_start: m.period.start,
            period_end: m.period.end,
            quantity: m.quantity,
            unit: &m.unit,
            unit_price: self.price.unit_price,
            amount: self.price.amount,
            currency: self.currency(),
            plan_id: self.plan.as_ref().map_or("", |p| p.id.as_str()),
            plan_version: self.price.plan_version,
            rule: RuleText::Name(self.price.rule.name(&m.meter)),
            raw_count: m.raw_count,
            segments: SegmentNames::Indices {
                of: &m.segments,
                paths: of.segment_paths,
            },
            attributes: &m.attributes,
            error: self.error(),
        }
    }

    /// What a daily cell reads of the line.
    pub fn cell_input<'a>(&'a self, of: &ResourceLines<'a>) -> CellInput<'a> {
        let m = &self.metered;
        CellInput {
            project_id: of.project,
            resource_id: of.resource,
            meter: &m.meter,
            unit: &m.unit,
            currency: self.currency(),
            group: &m.group,
            attributes: &m.attributes,
            period_start: m.period.start,
            quantity: m.quantity,
            amount: self.price.amount,
            has_error: self.error().is_some(),
        }
    }

    /// The line as a [`RatedLine`] (owned text: for tests and callers that
    /// handle few lines).
    pub fn to_rated_line(&self, of: &ResourceLines<'_>) -> RatedLine {
        let row = self.row(of);
        RatedLine {
            project_id: row.project_id.to_string(),
            resource_id: row.resource_id.to_string(),
            meter: row.meter.to_string(),
            group: row.group.clone(),
            period_start: row.period_start,
            period_end: row.period_end,
            quantity: row.quantity,
            unit: row.unit.to_string(),
            unit_price: row.unit_price,
            amount: row.amount,
            currency: row.currency.to_string(),
            plan_id: row.plan_id.to_string(),
            plan_version: row.plan_version,
            rule: row.rule.to_string(),
            raw_count: row.raw_count,
            segments: row.segments.paths().cloned().collect(),
            attributes: row.attributes.clone(),
            error: row.error.map(str::to_string),
        }
    }
}

/// What a rating run needs besides the data.
#[derive(Debug, Clone)]
pub struct RatingRequest {
    /// The range and its periods.
    pub window: RatingWindow,
    /// The meter definitions.
    pub meters: Arc<MeterSet>,
    /// The plans that price lines: per project (its billing account's
    /// assignment in force) or the default; none leaves lines unpriced.
    pub plans: Arc<PlanBook>,
}

/// Runs the DataFusion part of a rating and feeds each partition's lines to
/// the sink `make_sink(partition)` returns. Returns the totals and the
/// segments read.
pub async fn rate<S, F>(
    db: &Database,
    raw: &RawObjects,
    config: &RatingConfig,
    request: &RatingRequest,
    make_sink: F,
) -> Result<(RunTotals, Vec<String>, Vec<S>), RatingError>
where
    S: LineSink + 'static,
    F: Fn(usize) -> S,
{
    let window = request.window;
    let carried = carried_meters(&request.meters);
    // Taken before the catalog is read: what the snapshots this run leaves
    // can have seen.
    let taken = Utc::now();
    let (snapshot, flushes) = if carried.is_empty() {
        (None, (0, 0))
    } else {
        (
            carry::usable_snapshot(db, window.from, &carried).await?,
            (
                carry::flushes_before(db, window.from).await?,
                carry::flushes_before(db, window.to).await?,
            ),
        )
    };
    // Records before the range matter only as carried state: after the
    // snapshot's instant when there is one, else the whole history.
    let carry_from = match (&snapshot, carried.is_empty()) {
        (_, true) => window.from,
        (Some(s), false) => s.as_of,
        (None, false) => DateTime::UNIX_EPOCH,
    };
    let segments = catalog::active_segments(
        &db.pool,
        carry_from.timestamp_micros(),
        window.to.timestamp_micros(),
    )
    .await?;
    let partitions = config.partitions.max(1);
    let mut segment_paths: Vec<String> = segments.iter().map(|s| s.path.clone()).collect();
    let ctx = session(raw, config)?;
    let plan = if segments.is_empty() {
        None
    } else {
        Some(scan_plan(&ctx, raw, &segments, request, carry_from).await?)
    };
    let schema = keyed_schema(&plan.as_ref().map_or_else(scan_schema, |p| p.schema()));
    let mut carried_rows = match &snapshot {
        Some(s) => {
            let file = raw.get(&s.path).await.map_err(|e| {
                RatingError::Files(format!("cannot read carry snapshot {}: {e}", s.path))
            })?;
            carry::decode(file, &schema, &mut segment_paths)?
        }
        None => Vec::new(),
    };
    let carried_count: usize = carried_rows.iter().map(|b| b.num_rows()).sum();
    if segments.is_empty() && carried_count == 0 {
        let sinks = (0..partitions).map(make_sink).collect();
        return Ok((RunTotals::default(), Vec::new(), sinks));
    }
    let segment_paths = Arc::new(segment_paths);
    let rows = segments.iter().map(|s| s.row_count).sum::<i64>().max(0) as u64;
    let buckets = bucket_count(rows + carried_count as u64, config);
    let streams = match plan {
        Some(plan) => execute_stream_partitioned(plan, ctx.task_ctx())?,
        None => Vec::new(),
    };
    let started = std::time::Instant::now();

    // Stage 1: scan, and route rows to buckets (or keep them, if one bucket
    // holds the whole range).
    let shuffle_dir = config
        .spill_dir
        .join(format!("shuffle-{}", uuid::Uuid::new_v4().simple()));
    if buckets > 1 {
        std::fs::create_dir_all(&shuffle_dir).map_err(|e| {
            RatingError::Files(format!("cannot create {}: {e}", shuffle_dir.display()))
        })?;
    }
    // Removes the shuffle files however the run ends (error paths included).
    let _cleanup = RemoveOnDrop(shuffle_dir.clone());
    let mut groups: Vec<Vec<SendableRecordBatchStream>> =
        (0..partitions).map(|_| Vec::new()).collect();
    for (i, stream) in streams.into_iter().enumerate() {
        groups[i % partitions].push(stream);
    }
    let mut scans = Vec::new();
    for (task, group) in groups.into_iter().enumerate() {
        let dir = shuffle_dir.clone();
        let schema = schema.clone();
        // The snapshot's rows join the first task's, already keyed.
        let snapshot_rows = std::mem::take(&mut carried_rows);
        scans.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut writer = (buckets > 1).then(|| BucketWriter::new(&dir, task, buckets, &schema));
            // Rows go to their buckets, or stay in memory when one bucket
            // holds the range; either way stage 2 gets compact batches
            // sorted by resource key.
            let mut place = |batch: RecordBatch| match writer.as_mut() {
                Some(w) => w.route(&batch),
                None => {
                    let rows: Vec<u32> = (0..batch.num_rows() as u32).collect();
                    kept.push(shuffle::compact_by_resource(&[(&batch, &rows)])?);
                    Ok(())
                }
            };
            for batch in snapshot_rows {
                place(batch)?;
            }
            for mut stream in group {
                while let Some(batch) = stream.next().await {
                    place(with_record_keys(&batch?, &schema)?)?;
                }
            }
            if let Some(w) = writer {
                w.finish()?;
            }
            Ok::<_, RatingError>(kept)
        }));
    }
    let mut in_memory = Vec::new();
    for scan in scans {
        in_memory.extend(
            scan.await
                .map_err(|e| RatingError::Files(format!("a scan task failed: {e}")))??,
        );
    }
    let scan_seconds = started.elapsed().as_secs_f64();
    tracing::info!(buckets, scan_seconds, "rating stage 1 (scan, shuffle) done");

    // Stage 2: each worker takes every `partitions`-th bucket, in order,
    // sorts it by (project, resource) and meters it resource by resource.
    let in_memory = Arc::new(in_memory);
    let mut tasks = Vec::new();
    for worker in 0..partitions {
        let sink = make_sink(worker);
        let request = request.clone();
        let segment_paths = segment_paths.clone();
        let dir = shuffle_dir.clone();
        let in_memory = in_memory.clone();
        let carried = carried.clone();
        tasks.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(&request, &segment_paths, &carried, sink);
            for bucket in (worker..buckets).step_by(partitions) {
                let batches = if buckets == 1 {
                    in_memory.to_vec()
                } else {
                    shuffle::read_bucket(&dir, bucket, partitions)?
                };
                consumer.push_bucket(&batches).await?;
            }
            consumer.finish().await
        }));
    }
    let mut totals = RunTotals::default();
    let mut sinks = Vec::new();
    let mut failure = None;
    let (mut at_from, mut at_to) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await {
            Ok(Ok((t, sink, carried))) => {
                totals.add(&t);
                sinks.push(sink);
                at_from.extend(carried.at_from);
                at_to.extend(carried.at_to);
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => {
                failure = failure.or(Some(RatingError::Files(format!(
                    "a rating task failed: {e}"
                ))))
            }
        }
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64() - scan_seconds,
        "rating stage 2 (sort, meter, price, write) done"
    );
    if let Some(e) = failure {
        return Err(e);
    }
    if !carried.is_empty() {
        let mut snapshots = vec![(window.to, flushes.1, at_to)];
        if snapshot.as_ref().is_none_or(|s| s.as_of != window.from) {
            snapshots.push((window.from, flushes.0, at_from));
        }
        for (as_of, count, rows) in snapshots {
            // Without a snapshot the next run reads more history, but rates
            // the same: a failure here costs time, not money.
            if let Err(e) = carry::save(
                db,
                raw,
                as_of,
                taken,
                count,
                &carried,
                &rows,
                &segment_paths,
            )
            .await
            {
                tracing::warn!(error = %e, %as_of, "could not save a carry snapshot");
            }
        }
    }
    totals.carried_from = snapshot.map(|s| s.as_of);
    Ok((totals, segment_paths.to_vec(), sinks))
}

/// The rating scan's schema before keys are added, as `scan_plan` selects
/// it: used when a run reads no segment, only a carry snapshot.
fn scan_schema() -> SchemaRef {
    let segment = viewed_segment_schema();
    let mut fields: Vec<Field> = [
        "source",
        "id",
        "time",
        "received_at",
        "project_id",
        "resource_id",
        "meter",
        "kind",
        "volume",
        "unit",
        "attributes",
    ]
    .iter()
    .map(|name| {
        segment
            .field_with_name(name)
            .expect("segment schema has the scanned columns")
            .clone()
    })
    .collect();
    fields.push(Field::new("segment", DataType::UInt32, false));
    Arc::new(Schema::new(fields))
}

/// The segment schema with every text column read as `Utf8View`: the
/// Parquet reader then makes each value of a dictionary-encoded page a view
/// into the page's dictionary instead of copying its text, and rows of one
/// page with equal text have equal views, which the shuffle's dictionaries
/// use (see `shuffle::compact_by_resource`).
fn viewed_segment_schema() -> SchemaRef {
    let segment = tally_store::segment::schema();
    let fields: Vec<Field> = segment
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(
        fields,
        segment.metadata().clone(),
    ))
}

/// The scan's schema with `source` and `id` replaced by the record key
/// (`key_hi`, `key_lo`), plus the resource key (`resource_hi`,
/// `resource_lo`): both hashed once, in the parallel scan; the record key
/// is 16 bytes instead of two strings through the shuffle, and the
/// resource key both picks the bucket and groups the rows in stage 2.
fn keyed_schema(scan: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = scan
        .fields()
        .iter()
        .filter(|f| f.name() != "source" && f.name() != "id")
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("key_hi", DataType::UInt64, false));
    fields.push(Field::new("key_lo", DataType::UInt64, false));
    fields.push(Field::new("resource_hi", DataType::UInt64, false));
    fields.push(Field::new("resource_lo", DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

fn with_record_keys(batch: &RecordBatch, keyed: &SchemaRef) -> Result<RecordBatch, RatingError> {
    let text = |name: &str| scan_column::<StringViewArray>(batch, name);
    let (source, id) = (text("source")?, text("id")?);
    let (project, resource) = (text("project_id")?, text("resource_id")?);
    let n = batch.num_rows();
    let (mut hi, mut lo) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut r_hi, mut r_lo) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (h, l) = tally_store::dedupe::key_hash(source.value(i), id.value(i));
        hi.push(h);
        lo.push(l);
        let r = shuffle::resource_key(project.value(i), resource.value(i));
        r_hi.push((r >> 64) as u64);
        r_lo.push(r as u64);
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(keyed.fields().len());
    for f in keyed.fields() {
        columns.push(match f.name().as_str() {
            "key_hi" => Arc::new(UInt64Array::from(std::mem::take(&mut hi))),
            "key_lo" => Arc::new(UInt64Array::from(std::mem::take(&mut lo))),
            "resource_hi" => Arc::new(UInt64Array::from(std::mem::take(&mut r_hi))),
            "resource_lo" => Arc::new(UInt64Array::from(std::mem::take(&mut r_lo))),
            name => batch
                .column_by_name(name)
                .expect("keyed schema derives from the scan")
                .clone(),
        });
    }
    Ok(RecordBatch::try_new(keyed.clone(), columns)?)
}

/// Deletes a directory tree when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// How many buckets a range of `rows` raw rows is shuffled into: enough that
/// one bucket per worker (sorted, plus its rows being metered) stays within
/// the memory budget. One bucket means no shuffle files at all.
fn bucket_count(rows: u64, config: &RatingConfig) -> usize {
    // Arrow rows of the scan are ~350 bytes for OpenStack-like records; a
    // bucket is held once as a batch and partly again while sorted slices
    // and one resource's records are alive: budget 1 KiB per row.
    const BYTES_PER_ROW: u64 = 1024;
    let per_bucket =
        (config.memory_limit as u64 / config.partitions.max(1) as u64 / BYTES_PER_ROW).max(1_000);
    rows.div_ceil(per_bucket).clamp(1, 4096) as usize
}

/// URL under which the raw store's object store is registered with
/// DataFusion, whatever backend it is.
const RAW_URL: &str = "tally-raw://segments";

fn session(raw: &RawObjects, config: &RatingConfig) -> Result<SessionContext, RatingError> {
    std::fs::create_dir_all(&config.spill_dir).map_err(|e| {
        RatingError::Files(format!(
            "cannot create the spill directory {}: {e}",
            config.spill_dir.display()
        ))
    })?;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(config.memory_limit)))
        .with_temp_file_path(config.spill_dir.clone())
        .build_arc()?;
    let session_config = SessionConfig::new()
        .with_target_partitions(config.partitions.max(1))
        .with_batch_size(config.batch_size);
    let ctx = SessionContext::new_with_config_rt(session_config, runtime);
    let url = url::Url::parse(RAW_URL).expect("constant URL");
    ctx.register_object_store(&url, raw.object_store());
    Ok(ctx)
}

fn timestamp(t: DateTime<Utc>) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(t.timestamp_micros()),
        Some("UTC".into()),
    ))
}

/// The meters whose last value or state before the range matters.
fn carried_meters(meters: &MeterSet) -> Vec<String> {
    let mut names: Vec<String> = meters
        .meters
        .iter()
        .filter(|m| {
            matches!(
                m.aggregation,
                Aggregation::TimeWeighted | Aggregation::StateDuration { .. }
            )
        })
        .map(|m| m.records.meter.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// One scan per segment (so each row knows its segment), unioned.
async fn scan_plan(
    ctx: &SessionContext,
    raw: &RawObjects,
    segments: &[SegmentEntry],
    request: &RatingRequest,
    carry_from: DateTime<Utc>,
) -> Result<Arc<dyn ExecutionPlan>, RatingError> {
    let window = request.window;
    let in_range = col("time")
        .gt_eq(timestamp(window.from))
        .and(col("time").lt(timestamp(window.to)));
    let carried = carried_meters(&request.meters);
    let filter = if carried.is_empty() {
        in_range
    } else {
        let before = col("time")
            .gt_eq(timestamp(carry_from))
            .and(col("time").lt(timestamp(window.from)))
            .and(in_list(
                col("meter"),
                carried.iter().map(|m| lit(m.as_str())).collect(),
                false,
            ));
        in_range.or(before)
    };
    let schema = viewed_segment_schema();
    let mut union: Option<DataFrame> = None;
    for (index, segment) in segments.iter().enumerate() {
        let url = format!("{RAW_URL}/{}", raw.location(&segment.path));
        let frame = ctx
            .read_parquet(url, ParquetReadOptions::default().schema(&schema))
            .await?
            .filter(filter.clone())?
            .select(vec![
                col("source"),
                col("id"),
                col("time"),
                col("received_at"),
                col("project_id"),
                col("resource_id"),
                col("meter"),
                col("kind"),
                col("volume"),
                col("unit"),
                col("attributes"),
                lit(index as u32).alias("segment"),
            ])?;
        union = Some(match union {
            None => frame,
            Some(u) => u.union(frame)?,
        });
    }
    let frame = union.expect("at least one segment");
    Ok(frame.create_physical_plan().await?)
}

/// A column of a scan batch by name and type.
pub(crate) fn scan_column<'b, T: 'static>(
    batch: &'b RecordBatch,
    name: &str,
) -> Result<&'b T, RatingError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| RatingError::Segment {
            segment: "(scan)".into(),
            message: format!("column '{name}' is missing or mistyped"),
        })
}

/// A text column of a compact batch (see [`shuffle::compact_by_resource`]):
/// a key per row into the distinct values the batch holds.
struct TextColumn<'a> {
    keys: &'a UInt32Array,
    values: &'a StringArray,
}

impl<'a> TextColumn<'a> {
    fn of(batch: &'a RecordBatch, name: &str) -> Result<TextColumn<'a>, RatingError> {
        let dictionary: &DictionaryArray<UInt32Type> = scan_column(batch, name)?;
        let values = dictionary
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| RatingError::Segment {
                segment: "(scan)".into(),
                message: format!("column '{name}' is not a dictionary of text"),
            })?;
        Ok(TextColumn {
            keys: dictionary.keys(),
            values,
        })
    }

    /// The row's index into `values`; `None` for a null.
    fn key(&self, row: usize) -> Option<usize> {
        self.keys
            .is_valid(row)
            .then(|| self.keys.value(row) as usize)
    }

    /// The row's text ("" for a null).
    fn value(&self, row: usize) -> &'a str {
        self.key(row).map_or("", |k| self.values.value(k))
    }
}

/// The text of one compact batch, with what stage 2 makes of each distinct
/// value made once per batch rather than once per row: meter and unit names
/// interned, kinds parsed, attributes parsed when first read.
struct BatchText<'a> {
    project: TextColumn<'a>,
    resource: TextColumn<'a>,
    meter: TextColumn<'a>,
    kind: TextColumn<'a>,
    unit: TextColumn<'a>,
    attributes: TextColumn<'a>,
    /// Per value of `meter`, its interned name.
    meters: Vec<Arc<str>>,
    /// Per value of `unit`, its interned name.
    units: Vec<Arc<str>>,
    /// Per value of `kind`, the kind or why it is none (reported only if a
    /// row has it).
    kinds: Vec<Result<MeterKind, String>>,
    /// Per value of `attributes`, the parsed set, filled when a row first
    /// reads it (a malformed set fails the run only if a row has it).
    parsed: Vec<Option<Arc<Attributes>>>,
}

impl<'a> BatchText<'a> {
    /// `meters` and `units` intern names across batches, so that records of
    /// one meter share one `Arc` (which `dedupe` compares by address first).
    fn of(
        batch: &'a RecordBatch,
        meters: &mut HashMap<String, Arc<str>>,
        units: &mut HashMap<String, Arc<str>>,
    ) -> Result<BatchText<'a>, RatingError> {
        let intern = |map: &mut HashMap<String, Arc<str>>, s: &str| -> Arc<str> {
            match map.get(s) {
                Some(a) => a.clone(),
                None => {
                    let a: Arc<str> = Arc::from(s);
                    map.insert(s.to_string(), a.clone());
                    a
                }
            }
        };
        let (meter, unit) = (
            TextColumn::of(batch, "meter")?,
            TextColumn::of(batch, "unit")?,
        );
        let kind = TextColumn::of(batch, "kind")?;
        let attributes = TextColumn::of(batch, "attributes")?;
        Ok(BatchText {
            project: TextColumn::of(batch, "project_id")?,
            resource: TextColumn::of(batch, "resource_id")?,
            meters: meter
                .values
                .iter()
                .map(|m| intern(meters, m.unwrap_or("")))
                .collect(),
            units: unit
                .values
                .iter()
                .map(|u| intern(units, u.unwrap_or("")))
                .collect(),
            kinds: kind
                .values
                .iter()
                .map(|k| {
                    k.unwrap_or("")
                        .parse::<MeterKind>()
                        .map_err(|e| e.to_string())
                })
                .collect(),
            parsed: vec![None; attributes.values.len()],
            meter,
            kind,
            unit,
            attributes,
        })
    }
}

/// The fixed-width columns of a scan batch, which stage 2 gathers into
/// resource order (`interleave`) before reading them.
struct FixedColumns<'a> {
    key_hi: &'a UInt64Array,
    key_lo: &'a UInt64Array,
    time: &'a TimestampMicrosecondArray,
    received_at: &'a TimestampMicrosecondArray,
    volume: &'a Decimal128Array,
    segment: &'a UInt32Array,
}

impl FixedColumns<'_> {
    /// Their names, in the order a gathered batch holds them.
    const NAMES: [&'static str; 6] = [
        "key_hi",
        "key_lo",
        "time",
        "received_at",
        "volume",
        "segment",
    ];

    /// `batch` narrowed to these columns (no copy).
    fn project(batch: &RecordBatch) -> Result<RecordBatch, RatingError> {
        let schema = batch.schema();
        let indices = Self::NAMES
            .iter()
            .map(|name| {
                schema.index_of(name).map_err(|_| RatingError::Segment {
                    segment: "(scan)".into(),
                    message: format!("column '{name}' is missing"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(batch.project(&indices)?)
    }
}

impl<'a> FixedColumns<'a> {
    fn of(batch: &'a RecordBatch) -> Result<FixedColumns<'a>, RatingError> {
        Ok(FixedColumns {
            key_hi: scan_column(batch, "key_hi")?,
            key_lo: scan_column(batch, "key_lo")?,
            time: scan_column(batch, "time")?,
            received_at: scan_column(batch, "received_at")?,
            volume: scan_column(batch, "volume")?,
            segment: scan_column(batch, "segment")?,
        })
    }
}

/// One resource's rows as they accumulate from the sorted stream.
#[derive(Default)]
struct ResourceRows {
    project: String,
    resource: String,
    records: Vec<RawUsage>,
    /// Latest record before the range, per raw meter.
    carry: BTreeMap<Arc<str>, RawUsage>,
}

/// The carried state a worker saw, for the run's snapshots.
#[derive(Default)]
struct CarriedState {
    /// Per resource, the last record of each carried meter before the range.
    at_from: Vec<CarriedRecord>,
    /// The same before the range's end, without deleted resources.
    at_to: Vec<CarriedRecord>,
}

/// Meters buckets of rows one resource at a time and feeds the priced
/// lines to a sink.
struct Consumer<'a, S> {
    metering: Metering<'a>,
    request: &'a RatingRequest,
    segment_paths: &'a [String],
    /// Raw meters whose last record carries into the next range.
    carried_meters: &'a [String],
    sink: S,
    totals: RunTotals,
    carried: CarriedState,
    meters: HashMap<String, Arc<str>>,
    units: HashMap<String, Arc<str>>,
    current: ResourceRows,
}

impl<'a, S: LineSink> Consumer<'a, S> {
    fn new(
        request: &'a RatingRequest,
        segment_paths: &'a [String],
        carried_meters: &'a [String],
        sink: S,
    ) -> Self {
        Consumer {
            metering: Metering::new(&request.meters, request.window),
            request,
            segment_paths,
            carried_meters,
            sink,
            totals: RunTotals::default(),
            carried: CarriedState::default(),
            meters: HashMap::new(),
            units: HashMap::new(),
            current: ResourceRows::default(),
        }
    }

    /// Consumes one bucket: its rows are ordered by the 128-bit XXH3 of
    /// (project, resource), which puts each resource's rows together
    /// without comparing strings or copying rows (the order between
    /// resources only needs to be deterministic, not alphabetical). Equal
    /// hashes are taken as one resource, the same trust the ingest dedupe
    /// index places in 128-bit keys.
    async fn push_bucket(&mut self, batches: &[RecordBatch]) -> Result<(), RatingError> {
        let mut text: Vec<BatchText<'_>> = batches
            .iter()
            .map(|b| BatchText::of(b, &mut self.meters, &mut self.units))
            .collect::<Result<_, _>>()?;
        // Parsed attributes by their text, for the bucket: a resource's
        // records mostly repeat a few attribute sets, in every batch.
        let mut parsed: HashMap<&str, Arc<Attributes>> = HashMap::new();
        let fixed: Vec<RecordBatch> = batches
            .iter()
            .map(FixedColumns::project)
            .collect::<Result<_, _>>()?;
        let mut order: Vec<(u128, u32, u32)> =
            Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
        for (b, batch) in batches.iter().enumerate() {
            let resource_hi: &UInt64Array = scan_column(batch, "resource_hi")?;
            let resource_lo: &UInt64Array = scan_column(batch, "resource_lo")?;
            for row in 0..batch.num_rows() {
                let (hi, lo) = (resource_hi.value(row), resource_lo.value(row));
                order.push((
                    (u128::from(hi) << 64) | u128::from(lo),
                    b as u32,
                    row as u32,
                ));
            }
        }
        order.sort_unstable();
        // Every batch is sorted by resource key already (see
        // `shuffle::compact_by_resource`), so this order reads each batch
        // front to back. Gather the fixed-width columns in that order into
        // contiguous slices first: one tight copy loop per column beats
        // reading six columns row by row.
        let refs: Vec<&RecordBatch> = fixed.iter().collect();
        let mut current_key = None;
        for chunk in order.chunks(8192) {
            let positions: Vec<(usize, usize)> = chunk
                .iter()
                .map(|&(_, b, r)| (b as usize, r as usize))
                .collect();
            let slice = interleave_record_batch(&refs, &positions)?;
            let f = FixedColumns::of(&slice)?;
            for (row, &(key, b, r)) in chunk.iter().enumerate() {
                let (t, r) = (&mut text[b as usize], r as usize);
                if current_key != Some(key) {
                    if current_key.is_some() {
                        let done = std::mem::take(&mut self.current);
                        // The next resource's vector starts at the last
                        // one's size: grown by doubling, it copied its
                        // records again at every step (vector growth was a
                        // visible part of stage 2's memmove). A resource of
                        // another kind may get more room than it needs,
                        // one resource's worth at most.
                        self.current.records.reserve(done.records.len());
                        self.finish_resource(done).await?;
                    }
                    current_key = Some(key);
                    self.current.project = t.project.value(r).to_string();
                    self.current.resource = t.resource.value(r).to_string();
                }
                let record = read_row((&f, row), (t, r), &mut parsed)?;
                if record.time < self.request.window.from {
                    match self.current.carry.get(&record.meter) {
                        Some(held) if !later(&record, held) => {}
                        _ => {
                            self.current.carry.insert(record.meter.clone(), record);
                        }
                    }
                } else {
                    self.totals.records_read += 1;
                    self.current.records.push(record);
                }
            }
        }
        if current_key.is_some() {
            let done = std::mem::take(&mut self.current);
            self.finish_resource(done).await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(RunTotals, S, CarriedState), RatingError> {
        self.sink.finish().await?;
        Ok((self.totals, self.sink, self.carried))
    }

    /// What of this resource may carry past the range's start and its end:
    /// the carried-in records, and the last record of each carried meter.
    /// `None` when it carries nothing (no carried meters, or deleted before
    /// the range).
    fn carried_state(&self, rows: &ResourceRows) -> Option<(Vec<RawUsage>, Vec<RawUsage>)> {
        if self.carried_meters.is_empty()
            || rows.carry.values().any(|r| marks_deletion(&r.attributes))
        {
            return None;
        }
        // `carried_meters` is sorted.
        let carried = |meter: &str| {
            self.carried_meters
                .binary_search_by(|m| m.as_str().cmp(meter))
                .is_ok()
        };
        let mut last: BTreeMap<&str, &RawUsage> =
            rows.carry.iter().map(|(m, r)| (&**m, r)).collect();
        for r in rows.records.iter().filter(|r| carried(&r.meter)) {
            match last.get(&*r.meter) {
                Some(held) if !later(r, held) => {}
                _ => {
                    last.insert(&r.meter, r);
                }
            }
        }
        Some((
            rows.carry.values().cloned().collect(),
            last.into_values().cloned().collect(),
        ))
    }

    async fn finish_resource(&mut self, rows: ResourceRows) -> Result<(), RatingError> {
        let carried = self.carried_state(&rows);
        let carry: Vec<RawUsage> = rows.carry.into_values().collect();
        // Metering finds the deletion anyway: the snapshot at the range's
        // end asks it rather than scanning the records again.
        let (metered, duplicates, ended) = self.metering.meter_resource_until(rows.records, carry);
        if let Some((at_from, at_to)) = carried {
            let entry = |record: RawUsage| CarriedRecord {
                project: rows.project.clone(),
                resource: rows.resource.clone(),
                record,
            };
            self.carried.at_from.extend(at_from.into_iter().map(entry));
            if ended.is_none() {
                self.carried.at_to.extend(at_to.into_iter().map(entry));
            }
        }
        self.totals.duplicates += duplicates;
        if metered.is_empty() {
            return Ok(());
        }
        let plans = &self.request.plans;
        let lines: Vec<PricedLine> = metered
            .into_iter()
            .map(|m| {
                let plan = plans.shared_plan_for(&rows.project, m.period.start);
                price_line(&rows.project, m, plan)
            })
            .collect();
        let run_currency = plans.default_plan().map(|p| p.currency.code());
        for l in &lines {
            self.totals.lines += 1;
            if run_currency.is_none_or(|c| c == l.currency()) {
                self.totals.amount += l.price.amount;
            }
            if l.is_unpriced() {
                self.totals.unpriced_lines += 1;
            }
            if l.error().is_some() {
                self.totals.error_lines += 1;
            }
        }
        self.sink
            .accept(ResourceLines {
                project: &rows.project,
                resource: &rows.resource,
                lines,
                segment_paths: self.segment_paths,
            })
            .await
    }
}

/// One record from its fixed-width columns (gathered, at `row`) and its
/// text (in its compact batch, at `at`).
fn read_row<'b>(
    (c, row): (&FixedColumns<'_>, usize),
    (t, at): (&mut BatchText<'b>, usize),
    parsed: &mut HashMap<&'b str, Arc<Attributes>>,
) -> Result<RawUsage, RatingError> {
    let segment = c.segment.value(row);
    let bad = |message: String| RatingError::Segment {
        segment: format!("#{segment}"),
        message,
    };
    let instant = |v: i64| {
        DateTime::from_timestamp_micros(v).ok_or_else(|| bad(format!("timestamp {v} out of range")))
    };
    let (hi, lo) = (c.key_hi.value(row), c.key_lo.value(row));
    let attributes_key = t
        .attributes
        .key(at)
        .ok_or_else(|| bad("attributes are null".into()))?;
    let attrs = match &t.parsed[attributes_key] {
        Some(a) => a.clone(),
        None => {
            let text = t.attributes.values.value(attributes_key);
            let a = match parsed.get(text) {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(
                        serde_json::from_str::<Attributes>(text)
                            .map_err(|e| bad(format!("attributes are not a JSON object: {e}")))?,
                    );
                    parsed.insert(text, a.clone());
                    a
                }
            };
            t.parsed[attributes_key] = Some(a.clone());
            a
        }
    };
    let kind = match t.kind.key(at) {
        Some(k) => t.kinds[k].clone().map_err(bad)?,
        None => return Err(bad("kind is null".into())),
    };
    Ok(RawUsage {
        meter: t.meters[t.meter.key(at).ok_or_else(|| bad("meter is null".into()))?].clone(),
        time: instant(c.time.value(row))?,
        received_at: instant(c.received_at.value(row))?,
        key: (u128::from(hi) << 64) | u128::from(lo),
        kind,
        volume: tally_store::segment::volume_from_i128(c.volume.value(row))
            .map_err(|e| bad(e.to_string()))?,
        unit: t.unit.key(at).map(|k| t.units[k].clone()),
        attributes: attrs,
        segment,
    })
}

/// Prices one metered line with the plan (or leaves it unpriced).
pub fn price_line(project: &str, m: MeteredLine, plan: Option<&Arc<PricePlan>>) -> PricedLine {
    let price = match plan {
        Some(p) if m.error.is_none() => {
            p.price(&m.meter, project, &m.attributes, m.period.start, m.quantity)
        }
        _ => LinePrice::unpriced(0),
    };
    PricedLine {
        metered: m,
        plan: plan.cloned(),
        price,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    const METERS: &str = r#"
[[meters]]
name = "egress.gb"
unit = "GB"
records = { meter = "egress" }
aggregation = { type = "sum" }
"#;

    const PLAN: &str = r#"
id = "p"
currency = "EUR"
[[versions]]
effective_from = "2026-01-01T00:00:00Z"
[[versions.rules]]
meter = "egress.gb"
free_allowance = "3"
charge = { type = "graduated", tiers = [
  { up_to = "10", unit_price = "0.09" },
  { up_to = "50", unit_price = "0.07", flat_fee = "0.5" },
  { unit_price = "0.05" },
] }
"#;

    fn record(i: u32, volume: Decimal) -> RawUsage {
        let t =
            Utc.with_ymd_and_hms(2026, 10, 1, 5, 0, 0).unwrap() + Duration::seconds(i64::from(i));
        RawUsage {
            meter: Arc::from("egress"),
            time: t,
            received_at: t,
            key: u128::from(i),
            kind: MeterKind::Delta,
            volume,
            unit: None,
            attributes: Arc::default(),
            segment: 0,
        }
    }

    proptest! {
        /// However a period's usage is split across records, the line is
        /// priced on the period's total: graduated tiers, allowance and flat
        /// fees give the same amount as pricing the total at once.
        #[test]
        fn splitting_usage_across_records_does_not_change_the_amount(
            parts in proptest::collection::vec(0u32..4_000, 1..12),
        ) {
            let meters = MeterSet::from_toml(METERS).unwrap();
            let plan = PricePlan::from_toml(PLAN, Some(&meters.names())).unwrap();
            let window = RatingWindow::new(
                Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 10, 2, 0, 0, 0).unwrap(),
                Duration::hours(1),
            )
            .unwrap();
            let metering = Metering::new(&meters, window);
            // Parts are hundredths of a GB.
            let volumes: Vec<Decimal> = parts.iter().map(|p| Decimal::new(i64::from(*p), 2)).collect();
            let total: Decimal = volumes.iter().sum();
            let records = volumes.iter().enumerate().map(|(i, v)| record(i as u32, *v)).collect();
            let (lines, _) = metering.meter_resource(records, Vec::new());
            prop_assert_eq!(lines.len(), 1);
            let plan = Arc::new(plan);
            let priced = price_line("p1", lines.into_iter().next().unwrap(), Some(&plan));
            let of = ResourceLines { project: "p1", resource: "vm", lines: Vec::new(), segment_paths: &[] };
            let line = priced.to_rated_line(&of);
            // By hand, on the total: 3 GB free, then 10 at 0.09, up to 50 at
            // 0.07 (+0.5 once the tier is entered), the rest at 0.05.
            let d = |s: &str| s.parse::<Decimal>().unwrap();
            let billable = (total - d("3")).max(Decimal::ZERO);
            let mut expected = billable.min(d("10")) * d("0.09");
            if billable > d("10") {
                expected += (billable.min(d("50")) - d("10")) * d("0.07") + d("0.5");
            }
            if billable > d("50") {
                expected += (billable - d("50")) * d("0.05");
            }
            prop_assert_eq!(line.quantity, total);
            prop_assert_eq!(line.amount, expected);
            prop_assert_eq!(line.rule, "rules[0]");
            prop_assert_eq!(line.raw_count, parts.len() as u64);
        }
    }
}
