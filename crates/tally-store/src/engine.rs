//! The raw store: group-committed appends, imports, flushes, compaction and
//! the read path, over the pieces in the sibling modules.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tally_core::{Identity, Role, UsageRecord};
use tally_db::Database;
use tokio::sync::oneshot;
use tokio::task::JoinHandle as TaskHandle;

use crate::catalog::{self, FlushOrigin, SegmentEntry};
use crate::codec::{self, to_micros};
use crate::dedupe::{self, DedupeIndex, KeyHash};
use crate::objects::{ObjectsError, RawObjects};
use crate::segment::{self, SegmentError};
use crate::wal::{self, ReplayError, WalFile};

/// Settings of the raw store. Defaults suit a laptop and a mid-size cloud.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory (log, key files, and by default the segments).
    pub data_dir: PathBuf,
    /// Where segments go; `None` means `<data_dir>/raw`.
    pub raw_url: Option<String>,
    /// A log file is sealed and flushed once it reaches this size.
    pub wal_rotate_bytes: u64,
    /// ... or once it is this old, so records reach Parquet promptly.
    pub flush_interval: Duration,
    /// Most records one group commit takes (bounds a group's latency).
    pub max_group_records: usize,
    /// Days a record key is remembered for dedupe.
    pub dedupe_window_days: u32,
    /// Most keys remembered, whatever the window.
    pub dedupe_max_keys: usize,
    /// zstd level of new segments.
    pub zstd_level: i32,
    /// A partition with at least this many small segments is compacted.
    pub compaction_min_segments: usize,
    /// Segments below this many rows are small; merges aim for this size.
    pub compaction_target_rows: usize,
    /// How often compaction looks for work.
    pub compaction_interval: Duration,
    /// How long a compacted segment's file is kept for readers in flight.
    pub retired_grace: Duration,
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            raw_url: None,
            wal_rotate_bytes: 64 << 20,
            flush_interval: Duration::from_secs(10),
            max_group_records: 200_000,
            dedupe_window_days: 35,
            dedupe_max_keys: 200_000_000,
            zstd_level: 1,
            compaction_min_segments: 4,
            compaction_target_rows: 1_000_000,
            compaction_interval: Duration::from_secs(60),
            retired_grace: Duration::from_secs(300),
        }
    }
}

/// Errors of the raw store. Each says what failed and, where a person can
/// act, what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An earlier log write or fsync failed; nothing more is accepted until
    /// a restart replays the log (the safe answer to an fsync error).
    #[error(
        "the write-ahead log is unusable after an I/O error ({0}); check the disk and restart tally, which replays the log"
    )]
    Poisoned(String),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Replaying the log failed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The catalog failed.
    #[error("segment catalog: {0}")]
    Catalog(#[from] sqlx::Error),
    /// The object store failed.
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    /// A segment could not be encoded or decoded.
    #[error("segment {path}: {source}")]
    Segment {
        /// The segment.
        path: String,
        /// The cause.
        source: SegmentError,
    },
    /// A query's cursor is not one this store issued.
    #[error("invalid cursor: pass back the next_cursor of the previous page unchanged")]
    BadCursor,
    /// The store is shutting down.
    #[error("the raw store is shutting down")]
    Closed,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// The result of an append or import.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AppendOutcome {
    /// Records now durable.
    pub accepted: u64,
    /// Records already stored (within the dedupe window) or repeated within
    /// the same request.
    pub duplicates: u64,
}

/// Filters of a raw-record query. Times are a half-open range `[from, to)`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventFilter {
    /// Only this project.
    pub project_id: Option<String>,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// Only this meter.
    pub meter: Option<String>,
    /// Event time at or after.
    pub from: Option<DateTime<Utc>>,
    /// Event time before.
    pub to: Option<DateTime<Utc>>,
}

/// Where a page ended: the sort key of its last record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueryCursor {
    t: i64,
    s: String,
    i: String,
}

impl QueryCursor {
    /// The opaque text form handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("serializable"))
    }

    /// Parses a cursor from its text form.
    pub fn decode(text: &str) -> Result<QueryCursor, StoreError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| StoreError::BadCursor)?;
        serde_json::from_slice(&bytes).map_err(|_| StoreError::BadCursor)
    }

    fn of(r: &UsageRecord) -> QueryCursor {
        QueryCursor {
            t: to_micros(r.time),
            s: r.source.clone(),
            i: r.id.clone(),
        }
    }
}

/// One page of raw records.
#[derive(Debug)]
pub struct EventPage {
    /// Records in (time, source, id) order.
    pub records: Vec<UsageRecord>,
    /// Pass to the next query to continue; `None` on the last page.
    pub next: Option<QueryCursor>,
}

/// Figures about the store, for health and metrics.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoreStats {
    /// Active segments, their records and bytes.
    pub catalog: catalog::CatalogStats,
    /// Acknowledged records not yet in Parquet.
    pub unflushed_records: u64,
    /// Age of the oldest unflushed record, seconds.
    pub flush_lag_seconds: f64,
    /// Keys in the dedupe index.
    pub dedupe_keys: u64,
}

/// Records written together, with their dedupe keys and receive days: a
/// key is hashed once per record, when it is reserved, and reused for the
/// key file at flush time.
struct Chunk {
    records: Vec<UsageRecord>,
    keys: Vec<(KeyHash, dedupe::Day)>,
}

type Memtable = BTreeMap<u64, Vec<Arc<Chunk>>>;

struct Shared {
    counters: crate::counters::IngestCounters,
    config: StoreConfig,
    db: Database,
    objects: RawObjects,
    wal_dir: PathBuf,
    keys_dir: PathBuf,
    dedupe: Mutex<DedupeIndex>,
    /// Maximum receive day of each key file, by flush id, for eviction.
    key_files: Mutex<BTreeMap<String, dedupe::Day>>,
    /// Acknowledged records by log file, until their flush is cataloged.
    memtable: RwLock<Memtable>,
    poisoned: Mutex<Option<String>>,
    closing: AtomicBool,
    /// Serializes flushes of log files: the background flusher and shutdown
    /// may both reach the same sealed file.
    flush_lock: tokio::sync::Mutex<()>,
}

enum Command {
    Append {
        records: Vec<UsageRecord>,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
    /// Seal the current log file now (if it holds records) and reply with
    /// the sequence numbers sealed so far and not yet flushed.
    Seal {
        reply: oneshot::Sender<()>,
    },
}

/// The raw usage store of one data directory. Cheap to clone.
#[derive(Clone)]
pub struct RawStore {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    handles: Arc<Mutex<Handles>>,
}

#[derive(Default)]
struct Handles {
    writer: Option<JoinHandle<()>>,
    /// Ends by itself once the writer is gone (its channel closes).
    flusher: Option<TaskHandle<()>>,
    /// Watch `closing` and end within about a second.
    maintenance: Vec<TaskHandle<()>>,
}

fn day_of(t: DateTime<Utc>) -> dedupe::Day {
    t.timestamp().div_euclid(86_400) as dedupe::Day
}

fn flush_id_for_wal(seq: u64) -> String {
    format!("wal-{seq:016}")
}

impl RawStore {
    /// Opens the store: loads dedupe keys, replays and flushes any log left
    /// by an earlier run (crash or not), removes files no catalog row
    /// claims, and starts the group-commit writer and background flusher.
    ///
    /// The caller must hold the data directory's [`crate::DataDirLock`].
    pub async fn open(config: StoreConfig, db: Database) -> Result<RawStore, StoreError> {
        let wal_dir = config.data_dir.join("wal");
        let keys_dir = config.data_dir.join("dedupe");
        for d in [&wal_dir, &keys_dir] {
            std::fs::create_dir_all(d).map_err(io(format!("cannot create {}", d.display())))?;
        }
        let raw_url = config
            .raw_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", config.data_dir.join("raw").display()));
        let objects = RawObjects::open(&raw_url)?;
        let shared = Arc::new(Shared {
            counters: crate::counters::IngestCounters::default(),
            dedupe: Mutex::new(DedupeIndex::new(
                config.dedupe_window_days,
                config.dedupe_max_keys,
            )),
            config,
            db,
            objects,
            wal_dir,
            keys_dir,
            key_files: Mutex::default(),
            memtable: RwLock::default(),
            poisoned: Mutex::default(),
            closing: AtomicBool::new(false),
            flush_lock: tokio::sync::Mutex::new(()),
        });
        shared.load_key_files().await?;
        let last_seq = shared.recover_wal().await?;
        shared.remove_orphan_segments().await?;

        let catalog_seq = catalog::max_wal_seq(&shared.db.pool).await?;
        let next_seq = last_seq.max(catalog_seq).map_or(0, |s| s + 1);
        let wal = WalFile::create(&shared.wal_dir, next_seq)
            .map_err(io("cannot create a write-ahead log file"))?;
        shared
            .memtable
            .write()
            .expect("memtable lock")
            .insert(next_seq, Vec::new());

        let (commands, rx) = mpsc::channel();
        let (flush_tx, flush_rx) = tokio::sync::mpsc::unbounded_channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("tally-wal-writer".into())
            .spawn(move || writer_loop(writer_shared, rx, wal, flush_tx))
            .map_err(io("cannot start the log writer thread"))?;
        let flusher = tokio::spawn(flusher_loop(shared.clone(), flush_rx));
        let store = RawStore {
            shared,
            commands,
            handles: Arc::new(Mutex::new(Handles {
                writer: Some(writer),
                flusher: Some(flusher),
                maintenance: Vec::new(),
            })),
        };
        store.update_gauges().await;
        Ok(store)
    }

    /// Starts compaction, cleanup of retired files, dedupe eviction and
    /// gauge updates in the background (what `tally serve` runs).
    pub fn spawn_maintenance(&self) {
        let store = self.clone();
        let task = tokio::spawn(async move {
            let mut last_evict = Instant::now() - Duration::from_secs(3600);
            let mut last_compact = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if store.shared.closing.load(Ordering::Relaxed) {
                    return;
                }
                store.update_gauges().await;
                if last_compact.elapsed() >= store.shared.config.compaction_interval {
                    last_compact = Instant::now();
                    if let Err(e) = store.compact_once().await {
                        tracing::warn!(error = %e, "compaction failed; will retry");
                    }
                    if let Err(e) = store.delete_retired().await {
                        tracing::warn!(error = %e, "cleanup of compacted segments failed; will retry");
                    }
                }
                if last_evict.elapsed() >= Duration::from_secs(3600) {
                    last_evict = Instant::now();
                    store.evict_dedupe(Utc::now());
                }
            }
        });
        self.handles.lock().expect("handles").maintenance.push(task);
    }

    /// Appends records durably (write-ahead log, group commit). Returns once
    /// every accepted record is fsynced; duplicates are not written.
    pub async fn append(&self, records: Vec<UsageRecord>) -> Result<AppendOutcome, StoreError> {
        if records.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Append { records, reply })
            .map_err(|_| StoreError::Closed)?;
        let outcome = rx.await.map_err(|_| StoreError::Closed)??;
        self.shared
            .counters
            .stored(outcome.accepted, outcome.duplicates);
        Ok(outcome)
    }

    /// What every ingest path into this store has counted.
    pub fn counters(&self) -> &crate::counters::IngestCounters {
        &self.shared.counters
    }

    /// Writes records straight into Parquet segments, bypassing the log:
    /// the bulk path of `tally ingest`. Returns once they are durable and
    /// cataloged. Meant for large batches (hundreds of thousands).
    pub async fn import(&self, records: Vec<UsageRecord>) -> Result<AppendOutcome, StoreError> {
        let total = records.len() as u64;
        let mut keys = Vec::with_capacity(records.len());
        let mut accepted = Vec::with_capacity(records.len());
        {
            let mut ix = self.shared.dedupe.lock().expect("dedupe lock");
            for r in records {
                let k = dedupe::key_hash(&r.source, &r.id);
                if ix.reserve(k) {
                    keys.push((k, day_of(r.received_at)));
                    accepted.push(r);
                }
            }
        }
        let outcome = AppendOutcome {
            accepted: accepted.len() as u64,
            duplicates: total - accepted.len() as u64,
        };
        if accepted.is_empty() {
            self.shared.counters.stored(0, outcome.duplicates);
            return Ok(outcome);
        }
        let flush_id = format!("import-{}", uuid::Uuid::new_v4().simple());
        let chunk = Arc::new(Chunk {
            records: accepted,
            keys,
        });
        let result = self
            .shared
            .write_flush(
                &flush_id,
                FlushOrigin::Import,
                vec![chunk.clone()],
                Vec::new(),
            )
            .await;
        let mut ix = self.shared.dedupe.lock().expect("dedupe lock");
        match result {
            Ok(()) => {
                ix.commit(chunk.keys.iter().copied());
                self.shared
                    .counters
                    .stored(outcome.accepted, outcome.duplicates);
                Ok(outcome)
            }
            Err(e) => {
                ix.release(chunk.keys.iter().map(|(k, _)| *k));
                Err(e)
            }
        }
    }

    /// Lists raw records visible to `caller`, filtered and paginated. The
    /// caller's scope is applied here, in the data layer: a project reader
    /// can only ever get its own project's records.
    pub async fn query(
        &self,
        caller: &Identity,
        filter: &EventFilter,
        after: Option<&QueryCursor>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let mut filter = filter.clone();
        match &caller.role {
            Role::Admin => {}
            Role::ProjectReader { project_id } => {
                if filter.project_id.as_ref().is_some_and(|p| p != project_id) {
                    return Ok(EventPage {
                        records: Vec::new(),
                        next: None,
                    });
                }
                filter.project_id = Some(project_id.clone());
            }
            // Account readers see their account's projects once billing
            // accounts exist; until then an account owns no raw data.
            Role::AccountReader { .. } => {
                return Ok(EventPage {
                    records: Vec::new(),
                    next: None,
                });
            }
        }
        let from_us = filter.from.map_or(i64::MIN, to_micros);
        let to_us = filter.to.map_or(i64::MAX, to_micros);
        let matches = |r: &UsageRecord| {
            let t = to_micros(r.time);
            t >= from_us
                && t < to_us
                && filter
                    .project_id
                    .as_ref()
                    .is_none_or(|p| *p == r.project_id)
                && filter
                    .resource_id
                    .as_ref()
                    .is_none_or(|p| *p == r.resource_id)
                && filter.meter.as_ref().is_none_or(|p| *p == r.meter)
                && after.is_none_or(|c| QueryCursor::of(r) > *c)
        };

        // Snapshot the memtable first: a flush that completes after this
        // point is read from the memtable, and its segments are skipped.
        let mem: Vec<(u64, Vec<Arc<Chunk>>)> = self
            .shared
            .memtable
            .read()
            .expect("memtable lock")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let in_memory: HashSet<String> = mem.iter().map(|(s, _)| flush_id_for_wal(*s)).collect();
        let mut found: Vec<UsageRecord> = Vec::new();
        for (_, chunks) in &mem {
            for chunk in chunks {
                found.extend(chunk.records.iter().filter(|r| matches(r)).cloned());
            }
        }
        // Segments are sorted by (time, source, id): each one contributes at
        // most its first `limit + 1` matching rows, and segments ending
        // before the cursor are skipped by the catalog.
        let start_us = from_us.max(after.map_or(i64::MIN, |c| c.t));
        let segments = catalog::active_segments(&self.shared.db.pool, start_us, to_us).await?;
        let row_filter = segment::RowFilter {
            project_id: filter.project_id.as_deref(),
            resource_id: filter.resource_id.as_deref(),
            meter: filter.meter.as_deref(),
            from_us,
            to_us,
            after: after.map(|c| (c.t, c.s.as_str(), c.i.as_str())),
        };
        for seg in segments.iter().filter(|s| !in_memory.contains(&s.flush_id)) {
            let file = self.shared.objects.get(&seg.path).await?;
            let seg_err = |source| StoreError::Segment {
                path: seg.path.clone(),
                source,
            };
            let mut wanted = limit.saturating_add(1);
            for batch in segment::read_batches(file).map_err(seg_err)? {
                let rows = segment::matching_rows(&batch, &row_filter, wanted);
                wanted -= rows.len();
                found.extend(segment::from_batch(&batch, rows.into_iter()).map_err(seg_err)?);
                if wanted == 0 {
                    break;
                }
            }
        }
        found.sort_by(|a, b| segment::sort_key(a).cmp(&segment::sort_key(b)));
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().map(QueryCursor::of)
        } else {
            None
        };
        Ok(EventPage {
            records: found,
            next,
        })
    }

    /// Merges small segments of each partition into larger ones. Returns the
    /// number of segments retired.
    pub async fn compact_once(&self) -> Result<usize, StoreError> {
        let cfg = &self.shared.config;
        let pool = &self.shared.db.pool;
        let target = cfg.compaction_target_rows as i64;
        let mut retired = 0;
        for partition in
            catalog::compactable_partitions(pool, cfg.compaction_min_segments as i64, target)
                .await?
        {
            let small: Vec<SegmentEntry> = catalog::partition_segments(pool, &partition)
                .await?
                .into_iter()
                .filter(|s| s.row_count < target)
                .collect();
            let mut group: Vec<SegmentEntry> = Vec::new();
            let mut rows = 0;
            let mut groups = Vec::new();
            for s in small {
                if rows + s.row_count > target && group.len() >= 2 {
                    groups.push(std::mem::take(&mut group));
                    rows = 0;
                }
                rows += s.row_count;
                group.push(s);
            }
            if group.len() >= 2 {
                groups.push(group);
            }
            for group in groups {
                let mut records = Vec::new();
                for s in &group {
                    let file = self.shared.objects.get(&s.path).await?;
                    records.extend(segment::decode(file).map_err(|source| {
                        StoreError::Segment {
                            path: s.path.clone(),
                            source,
                        }
                    })?);
                }
                let paths: Vec<String> = group.iter().map(|s| s.path.clone()).collect();
                let flush_id = format!("compact-{}", uuid::Uuid::new_v4().simple());
                self.shared
                    .write_flush(
                        &flush_id,
                        FlushOrigin::Compaction,
                        // Compaction writes no key file: the keys of these
                        // records are in the key files of their first flush.
                        vec![Arc::new(Chunk {
                            records,
                            keys: Vec::new(),
                        })],
                        paths.clone(),
                    )
                    .await?;
                retired += paths.len();
                tracing::info!(partition, merged = paths.len(), "compacted segments");
            }
        }
        Ok(retired)
    }

    /// Deletes the files of segments compacted longer ago than the grace
    /// period, and then their catalog rows.
    pub async fn delete_retired(&self) -> Result<usize, StoreError> {
        let before = Utc::now() - self.shared.config.retired_grace;
        let paths = catalog::retired_before(&self.shared.db.pool, to_micros(before)).await?;
        for p in &paths {
            self.shared.objects.delete(p).await?;
            catalog::forget_segment(&self.shared.db.pool, p).await?;
        }
        Ok(paths.len())
    }

    /// Forgets dedupe keys received before the window and deletes key
    /// files wholly outside it.
    pub fn evict_dedupe(&self, now: DateTime<Utc>) {
        let today = day_of(now);
        let start = {
            let mut ix = self.shared.dedupe.lock().expect("dedupe lock");
            ix.evict(today);
            metrics::gauge!("tally_dedupe_keys").set(ix.len() as f64);
            ix.window_start(today)
        };
        let mut files = self.shared.key_files.lock().expect("key files lock");
        files.retain(|flush_id, max_day| {
            if *max_day < start {
                let _ = std::fs::remove_file(self.shared.keys_dir.join(format!("{flush_id}.keys")));
                false
            } else {
                true
            }
        });
    }

    /// Current figures of the store.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let catalog = catalog::stats(&self.shared.db.pool).await?;
        let (unflushed, oldest) = {
            let mem = self.shared.memtable.read().expect("memtable lock");
            let mut n = 0u64;
            let mut oldest: Option<DateTime<Utc>> = None;
            for chunk in mem.values().flatten() {
                n += chunk.records.len() as u64;
                if let Some(r) = chunk.records.first() {
                    oldest = Some(oldest.map_or(r.received_at, |o| o.min(r.received_at)));
                }
            }
            (n, oldest)
        };
        let lag = oldest.map_or(0.0, |o| {
            (Utc::now() - o).num_milliseconds().max(0) as f64 / 1000.0
        });
        Ok(StoreStats {
            catalog,
            unflushed_records: unflushed,
            flush_lag_seconds: lag,
            dedupe_keys: self.shared.dedupe.lock().expect("dedupe lock").len() as u64,
        })
    }

    async fn update_gauges(&self) {
        if let Ok(s) = self.stats().await {
            metrics::gauge!("tally_store_segments").set(s.catalog.segments as f64);
            metrics::gauge!("tally_store_records").set(s.catalog.records as f64);
            metrics::gauge!("tally_store_unflushed_records").set(s.unflushed_records as f64);
            metrics::gauge!("tally_store_flush_lag_seconds").set(s.flush_lag_seconds);
            metrics::gauge!("tally_dedupe_keys").set(s.dedupe_keys as f64);
        }
    }

    /// Whether the log writer is healthy.
    pub fn health(&self) -> Result<(), String> {
        match &*self.shared.poisoned.lock().expect("poison lock") {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Makes every record acknowledged so far visible in Parquet segments:
    /// seals the current log file and flushes all sealed ones. The rating
    /// job calls it so that a run sees what was ingested just before it.
    pub async fn flush_now(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Seal { reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?;
        let mut seqs = self.shared.memtable_seqs();
        // The last one is the open log file the writer appends to.
        seqs.pop();
        for seq in seqs {
            self.shared.flush_wal(seq).await?;
        }
        Ok(())
    }

    /// Where the segment files live.
    pub fn objects(&self) -> &RawObjects {
        &self.shared.objects
    }

    /// The billing database the catalog is in.
    pub fn database(&self) -> &Database {
        &self.shared.db
    }

    /// Stops accepting appends, flushes everything to Parquet and stops the
    /// background work. Appends after this fail with [`StoreError::Closed`].
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.shared.closing.store(true, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Stop { reply }).is_ok() {
            let _ = rx.await;
        }
        let (writer, flusher, maintenance) = {
            let mut h = self.handles.lock().expect("handles");
            (
                h.writer.take(),
                h.flusher.take(),
                std::mem::take(&mut h.maintenance),
            )
        };
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        // Never abort a flush or compaction midway: let them finish.
        if let Some(f) = flusher {
            let _ = f.await;
        }
        for t in maintenance {
            let _ = t.await;
        }
        let seqs = self.shared.memtable_seqs();
        for seq in seqs {
            self.shared.flush_wal(seq).await?;
        }
        Ok(())
    }
}

impl Shared {
    /// Sequence numbers of the log files whose records are in memory, oldest
    /// first (the last is the open one while the writer runs).
    fn memtable_seqs(&self) -> Vec<u64> {
        self.memtable
            .read()
            .expect("memtable lock")
            .keys()
            .copied()
            .collect()
    }

    async fn load_key_files(&self) -> Result<(), StoreError> {
        let committed: HashSet<String> = catalog::flush_ids(&self.db.pool)
            .await?
            .into_iter()
            .collect();
        let mut ix = self.dedupe.lock().expect("dedupe lock");
        let mut files = self.key_files.lock().expect("key files lock");
        let entries = std::fs::read_dir(&self.keys_dir)
            .map_err(io(format!("cannot list {}", self.keys_dir.display())))?;
        for entry in entries {
            let path = entry.map_err(io("cannot list key files"))?.path();
            let Some(flush_id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".keys"))
                .map(str::to_string)
            else {
                // Leftover temporary file of an interrupted write.
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if !committed.contains(&flush_id) {
                // Written by a flush that never committed: its records are
                // either still in the log (replayed below) or were never
                // acknowledged, so its keys must not count as seen.
                std::fs::remove_file(&path).map_err(io(format!(
                    "cannot remove uncommitted key file {}",
                    path.display()
                )))?;
                continue;
            }
            let keys = dedupe::read_key_file(&path)
                .map_err(io(format!("cannot read key file {}", path.display())))?;
            let max_day = keys.iter().map(|(_, d)| *d).max().unwrap_or(i32::MIN);
            ix.load(keys);
            files.insert(flush_id, max_day);
        }
        ix.evict(day_of(Utc::now()));
        Ok(())
    }

    /// Replays every log file an earlier run left and flushes it. Returns
    /// the highest sequence number seen.
    async fn recover_wal(&self) -> Result<Option<u64>, StoreError> {
        let seqs = wal::list(&self.wal_dir)
            .map_err(io(format!("cannot list {}", self.wal_dir.display())))?;
        for &seq in &seqs {
            let path = wal::path(&self.wal_dir, seq);
            if catalog::flush_exists(&self.db.pool, &flush_id_for_wal(seq)).await? {
                // Flushed, but the process died before deleting the file.
                std::fs::remove_file(&path).map_err(io("cannot remove a flushed log file"))?;
                continue;
            }
            let replay = wal::replay(&path)?;
            if replay.truncated_bytes > 0 {
                tracing::warn!(
                    file = %path.display(),
                    bytes = replay.truncated_bytes,
                    "cut a torn write off the end of the log (it was never acknowledged)"
                );
            }
            tracing::info!(file = %path.display(), records = replay.records.len(), "replayed write-ahead log");
            let keys: Vec<(KeyHash, dedupe::Day)> = replay
                .records
                .iter()
                .map(|r| (dedupe::key_hash(&r.source, &r.id), day_of(r.received_at)))
                .collect();
            self.dedupe
                .lock()
                .expect("dedupe lock")
                .load(keys.iter().copied());
            self.memtable.write().expect("memtable lock").insert(
                seq,
                vec![Arc::new(Chunk {
                    records: replay.records,
                    keys,
                })],
            );
            self.flush_wal(seq).await?;
        }
        Ok(seqs.last().copied())
    }

    /// Deletes segment files that no catalog row claims: the leftovers of a
    /// flush that crashed before committing.
    async fn remove_orphan_segments(&self) -> Result<(), StoreError> {
        let known: HashSet<String> = catalog::all_paths(&self.db.pool)
            .await?
            .into_iter()
            .collect();
        for path in self.objects.list("segments").await? {
            if path.ends_with(".parquet") && !known.contains(&path) {
                tracing::info!(path, "removing a segment left by an interrupted flush");
                self.objects.delete(&path).await?;
            }
        }
        Ok(())
    }

    /// Moves the records of sealed log file `seq` into Parquet, then deletes
    /// the file. Idempotent: a flush already committed only cleans up.
    async fn flush_wal(&self, seq: u64) -> Result<(), StoreError> {
        let _serial = self.flush_lock.lock().await;
        let flush_id = flush_id_for_wal(seq);
        let chunks = self
            .memtable
            .read()
            .expect("memtable lock")
            .get(&seq)
            .cloned()
            .unwrap_or_default();
        let count: usize = chunks.iter().map(|c| c.records.len()).sum();
        if count > 0 && !catalog::flush_exists(&self.db.pool, &flush_id).await? {
            let started = Instant::now();
            self.write_flush(&flush_id, FlushOrigin::Wal(seq), chunks, Vec::new())
                .await?;
            metrics::histogram!("tally_store_flush_seconds")
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(seq, records = count, "flushed log file to Parquet");
        }
        let flushed = self.memtable.write().expect("memtable lock").remove(&seq);
        crate::background::drop_later(flushed);
        let path = wal::path(&self.wal_dir, seq);
        match std::fs::remove_file(&path) {
            Ok(()) => wal::sync_dir(&self.wal_dir).map_err(io("cannot sync the log directory"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove a flushed log file")(e)),
        }
        Ok(())
    }

    /// Writes records as Parquet segments (one per event date) and their
    /// dedupe key file, then commits the flush in the catalog.
    async fn write_flush(
        &self,
        flush_id: &str,
        origin: FlushOrigin,
        chunks: Vec<Arc<Chunk>>,
        retire: Vec<String>,
    ) -> Result<(), StoreError> {
        let zstd_level = self.config.zstd_level;
        let id = flush_id.to_string();
        let key_path = self.keys_dir.join(format!("{flush_id}.keys"));
        let write_keys = origin != FlushOrigin::Compaction;
        type Encoded = (
            Vec<(SegmentEntry, Vec<u8>)>,
            dedupe::Day,
            BTreeSet<(String, String)>,
        );
        let encode = move || -> Result<Encoded, StoreError> {
            let mut by_date: BTreeMap<NaiveDate, Vec<&UsageRecord>> = BTreeMap::new();
            // (project, domain) pairs the producers named: how accounts
            // that own a Keystone domain find its projects.
            let mut named: BTreeSet<(&str, &str)> = BTreeSet::new();
            for r in chunks.iter().flat_map(|c| c.records.iter()) {
                by_date.entry(r.time.date_naive()).or_default().push(r);
                if let Some(d) = &r.domain_id {
                    named.insert((&r.project_id, d));
                }
            }
            let projects: BTreeSet<(String, String)> = named
                .into_iter()
                .map(|(p, d)| (p.to_string(), d.to_string()))
                .collect();
            let mut max_day = i32::MIN;
            if write_keys {
                let keys: Vec<(KeyHash, dedupe::Day)> =
                    chunks.iter().flat_map(|c| c.keys.iter().copied()).collect();
                max_day = keys.iter().map(|(_, d)| *d).max().unwrap_or(i32::MIN);
                dedupe::write_key_file(&key_path, &keys)
                    .map_err(io(format!("cannot write key file {}", key_path.display())))?;
            }
            let mut files = Vec::new();
            for (n, (date, mut records)) in by_date.into_iter().enumerate() {
                segment::sort(&mut records);
                let path = format!("segments/date={date}/{id}-{n:04}.parquet");
                let bytes = segment::encode(&records, zstd_level).map_err(|source| {
                    StoreError::Segment {
                        path: path.clone(),
                        source,
                    }
                })?;
                let entry = SegmentEntry {
                    path,
                    flush_id: id.clone(),
                    partition_date: date.to_string(),
                    min_time_us: to_micros(records[0].time),
                    max_time_us: to_micros(records[records.len() - 1].time),
                    min_received_us: records
                        .iter()
                        .map(|r| to_micros(r.received_at))
                        .min()
                        .unwrap_or(0),
                    max_received_us: records
                        .iter()
                        .map(|r| to_micros(r.received_at))
                        .max()
                        .unwrap_or(0),
                    row_count: records.len() as i64,
                    byte_size: bytes.len() as i64,
                };
                files.push((entry, bytes));
            }
            Ok((files, max_day, projects))
        };
        let encoded = if origin == FlushOrigin::Import {
            // An import's caller waits for it: this is the ingest path
            // itself, and at a lower priority the caller's own parsing
            // would starve it.
            tokio::task::spawn_blocking(encode).await.ok()
        } else {
            // A sealed log file or a compaction: nothing waits for it (the
            // records are durable already), see the `background` module.
            crate::background::run("encode", encode).await
        };
        let encoded: Encoded = encoded.ok_or_else(|| StoreError::Io {
            context: "segment encoding task failed".into(),
            source: std::io::Error::other("the encoding thread did not finish"),
        })??;
        let (files, max_day, projects) = encoded;
        let mut entries = Vec::with_capacity(files.len());
        for (entry, bytes) in files {
            self.objects.put(&entry.path, bytes).await?;
            entries.push(entry);
        }
        catalog::commit_flush(
            &self.db.pool,
            flush_id,
            origin,
            &entries,
            &retire,
            &projects,
            to_micros(Utc::now()),
        )
        .await?;
        if write_keys {
            self.key_files
                .lock()
                .expect("key files lock")
                .insert(flush_id.to_string(), max_day);
        }
        Ok(())
    }
}

struct PendingAppend {
    records: Vec<UsageRecord>,
    keys: Vec<KeyHash>,
    duplicates: u64,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// The group-commit loop: takes every append waiting, writes them as one
/// frame, fsyncs once, then answers them all.
fn writer_loop(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    mut wal: WalFile,
    flush_tx: tokio::sync::mpsc::UnboundedSender<u64>,
) {
    let mut opened = Instant::now();
    let interval = shared.config.flush_interval;
    let mut stop_reply = None;
    let mut seal_replies: Vec<oneshot::Sender<()>> = Vec::new();
    let mut body = Vec::new();
    loop {
        let wait = interval
            .saturating_sub(opened.elapsed())
            .max(Duration::from_millis(10));
        let first = match rx.recv_timeout(wait) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut group: Vec<PendingAppend> = Vec::new();
        let mut group_records = 0usize;
        if let Some(cmd) = first {
            group_records += take_command(cmd, &mut group, &mut stop_reply, &mut seal_replies);
            while group_records < shared.config.max_group_records && stop_reply.is_none() {
                match rx.try_recv() {
                    Ok(cmd) => {
                        group_records +=
                            take_command(cmd, &mut group, &mut stop_reply, &mut seal_replies)
                    }
                    Err(_) => break,
                }
            }
        }
        if !group.is_empty() {
            commit_group(&shared, &mut wal, &mut body, group);
        }
        let due = wal.records > 0
            && (wal.len >= shared.config.wal_rotate_bytes || opened.elapsed() >= interval);
        let sealing = stop_reply.is_some() || !seal_replies.is_empty();
        if due || (sealing && wal.records > 0) {
            match WalFile::create(&shared.wal_dir, wal.seq + 1) {
                Ok(next) => {
                    let sealed = std::mem::replace(&mut wal, next);
                    shared
                        .memtable
                        .write()
                        .expect("memtable lock")
                        .insert(wal.seq, Vec::new());
                    let _ = flush_tx.send(sealed.seq);
                }
                Err(e) => poison(&shared, format!("cannot create a new log file: {e}")),
            }
            opened = Instant::now();
        } else if wal.records == 0 {
            opened = Instant::now();
        }
        for reply in seal_replies.drain(..) {
            let _ = reply.send(());
        }
        if let Some(reply) = stop_reply.take() {
            let _ = reply.send(());
            break;
        }
    }
    // A sealed but never-used file is harmless: an empty log replays to nothing.
}

/// Adds a command to the group being collected; returns its record count.
fn take_command(
    cmd: Command,
    group: &mut Vec<PendingAppend>,
    stop: &mut Option<oneshot::Sender<()>>,
    seals: &mut Vec<oneshot::Sender<()>>,
) -> usize {
    match cmd {
        Command::Append { records, reply } => {
            let n = records.len();
            group.push(PendingAppend {
                records,
                keys: Vec::new(),
                duplicates: 0,
                reply,
            });
            n
        }
        Command::Stop { reply } => {
            *stop = Some(reply);
            0
        }
        Command::Seal { reply } => {
            seals.push(reply);
            0
        }
    }
}

fn poison(shared: &Shared, reason: String) {
    tracing::error!(%reason, "write-ahead log poisoned");
    metrics::counter!("tally_wal_errors_total").increment(1);
    *shared.poisoned.lock().expect("poison lock") = Some(reason);
}

/// `body` is the frame buffer, reused from group to group: a fresh one of a
/// few megabytes per group cost the kernel's page zeroing on every commit.
fn commit_group(
    shared: &Shared,
    wal: &mut WalFile,
    body: &mut Vec<u8>,
    mut group: Vec<PendingAppend>,
) {
    if let Some(reason) = shared.poisoned.lock().expect("poison lock").clone() {
        for p in group {
            let _ = p.reply.send(Err(StoreError::Poisoned(reason.clone())));
        }
        return;
    }
    // Claim keys; duplicates (already stored, or earlier in this group)
    // drop out here, before anything is written.
    {
        let mut ix = shared.dedupe.lock().expect("dedupe lock");
        for p in &mut group {
            let records = std::mem::take(&mut p.records);
            for r in records {
                let k = dedupe::key_hash(&r.source, &r.id);
                if ix.reserve(k) {
                    p.keys.push(k);
                    p.records.push(r);
                } else {
                    p.duplicates += 1;
                }
            }
        }
    }
    let count: usize = group.iter().map(|p| p.records.len()).sum();
    let mut result = Ok(());
    if count > 0 {
        body.clear();
        let mut encoder = codec::FrameEncoder::new();
        for r in group.iter().flat_map(|p| p.records.iter()) {
            encoder.push(r, body);
        }
        let started = Instant::now();
        result = wal.append(count as u32, body).and_then(|_| wal.sync());
        metrics::histogram!("tally_wal_fsync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("tally_wal_group_records").record(count as f64);
        // An unusually large import group should not pin its buffer.
        if body.capacity() > 64 << 20 {
            *body = Vec::new();
        }
    }
    match result {
        Ok(()) => {
            let mut all = Vec::with_capacity(count);
            let mut all_keys = Vec::with_capacity(count);
            let mut ix = shared.dedupe.lock().expect("dedupe lock");
            let mut replies = Vec::with_capacity(group.len());
            for p in group {
                let start = all_keys.len();
                all_keys.extend(
                    p.keys
                        .iter()
                        .zip(&p.records)
                        .map(|(k, r)| (*k, day_of(r.received_at))),
                );
                ix.commit(all_keys[start..].iter().copied());
                replies.push((
                    p.reply,
                    AppendOutcome {
                        accepted: p.records.len() as u64,
                        duplicates: p.duplicates,
                    },
                ));
                all.extend(p.records);
            }
            drop(ix);
            if !all.is_empty() {
                shared
                    .memtable
                    .write()
                    .expect("memtable lock")
                    .entry(wal.seq)
                    .or_default()
                    .push(Arc::new(Chunk {
                        records: all,
                        keys: all_keys,
                    }));
            }
            for (reply, outcome) in replies {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            let reason = format!("log write or fsync failed: {e}");
            poison(shared, reason.clone());
            let mut ix = shared.dedupe.lock().expect("dedupe lock");
            for p in group {
                ix.release(p.keys);
                let _ = p.reply.send(Err(StoreError::Poisoned(reason.clone())));
            }
        }
    }
}

async fn flusher_loop(shared: Arc<Shared>, mut rx: tokio::sync::mpsc::UnboundedReceiver<u64>) {
    while let Some(seq) = rx.recv().await {
        let mut delay = Duration::from_millis(200);
        loop {
            match shared.flush_wal(seq).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(seq, error = %e, "flush to Parquet failed; retrying (records stay safe in the log)");
                    metrics::counter!("tally_store_flush_errors_total").increment(1);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    if shared.closing.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
    }
}

/// The directory under which local segment files live, for tools and tests.
pub fn local_segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("raw").join("segments")
}
