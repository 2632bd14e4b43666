//! The rating job's shuffle: rows of a period are routed by a hash of
//! (project, resource) into buckets small enough to sort in memory.
//!
//! This is a Grace hash partition, the same shape as a Ballista shuffle
//! stage: the scan writes each bucket to its own Arrow IPC file (LZ4), and
//! the second stage reads one bucket at a time. Memory is then bounded by
//! one bucket per worker, whatever the size of the period, without relying
//! on an external sort. A period that fits in one bucket skips the files.
//!
//! Bucket numbers come from XXH3 of (project, resource), not from
//! DataFusion's hash, so they are stable across versions and processes:
//! that is part of what makes line files byte-identical across runs.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::compute::{interleave_record_batch, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::CompressionType;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::{IpcWriteOptions, StreamWriter};

use crate::job::{RatingError, scan_column};

/// Rows a scan task holds across all its buckets before writing them, and
/// the bounds on one bucket's share. A written batch is one sorted run of
/// stage 2's visit: larger runs mean fewer streams read at once, but every
/// bucket holds its share, so the share shrinks as buckets multiply (at
/// 214 buckets, a 112 M-record month, 1,224 rows each).
const PENDING_ROWS: usize = 256 * 1024;
const MIN_FLUSH_ROWS: usize = 1024;
const MAX_FLUSH_ROWS: usize = 8192;

/// The 128-bit key of a (project, resource): computed once per row in the
/// scan and carried as `resource_hi`/`resource_lo`, it picks the bucket here
/// and groups the resource's rows in stage 2.
pub fn resource_key(project: &str, resource: &str) -> u128 {
    let (hi, lo) = tally_store::dedupe::key_hash(project, resource);
    (u128::from(hi) << 64) | u128::from(lo)
}

/// The bucket of a resource key.
pub fn bucket_of(resource_key: u128, buckets: usize) -> usize {
    ((resource_key >> 64) as u64 % buckets as u64) as usize
}

fn files_err(e: impl std::fmt::Display) -> RatingError {
    RatingError::Files(format!("shuffle: {e}"))
}

/// One scan task's writers, one file per bucket (created on first use).
pub struct BucketWriter {
    dir: PathBuf,
    task: usize,
    schema: SchemaRef,
    pending: Vec<Vec<RecordBatch>>,
    pending_rows: Vec<usize>,
    flush_rows: usize,
    writers: Vec<Option<StreamWriter<BufWriter<File>>>>,
}

impl BucketWriter {
    /// Writers for scan task `task` under `dir`.
    pub fn new(dir: &Path, task: usize, buckets: usize, schema: SchemaRef) -> BucketWriter {
        BucketWriter {
            dir: dir.to_path_buf(),
            task,
            schema,
            pending: vec![Vec::new(); buckets],
            pending_rows: vec![0; buckets],
            flush_rows: (PENDING_ROWS / buckets.max(1)).clamp(MIN_FLUSH_ROWS, MAX_FLUSH_ROWS),
            writers: (0..buckets).map(|_| None).collect(),
        }
    }

    /// Routes a batch's rows to their buckets by its `resource_hi` column.
    pub fn route(&mut self, batch: &RecordBatch) -> Result<(), RatingError> {
        let buckets = self.pending.len();
        let resource_hi: &UInt64Array = scan_column(batch, "resource_hi")?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); buckets];
        for (i, hi) in resource_hi.values().iter().enumerate() {
            rows[bucket_of(u128::from(*hi) << 64, buckets)].push(i as u32);
        }
        for (b, indices) in rows.into_iter().enumerate() {
            if indices.is_empty() {
                continue;
            }
            let part = take_record_batch(batch, &UInt32Array::from(indices)).map_err(files_err)?;
            self.pending_rows[b] += part.num_rows();
            self.pending[b].push(part);
            if self.pending_rows[b] >= self.flush_rows {
                self.flush(b)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, b: usize) -> Result<(), RatingError> {
        if self.pending[b].is_empty() {
            return Ok(());
        }
        let batch = sorted_by_resource(&self.pending[b])?;
        self.pending[b].clear();
        self.pending_rows[b] = 0;
        if self.writers[b].is_none() {
            let path = bucket_file(&self.dir, b, self.task);
            let file = File::create(&path)
                .map_err(|e| files_err(format!("cannot create {}: {e}", path.display())))?;
            let options = IpcWriteOptions::default()
                .try_with_compression(Some(CompressionType::LZ4_FRAME))
                .map_err(files_err)?;
            self.writers[b] = Some(
                StreamWriter::try_new_with_options(
                    BufWriter::with_capacity(1 << 16, file),
                    &self.schema,
                    options,
                )
                .map_err(files_err)?,
            );
        }
        self.writers[b]
            .as_mut()
            .expect("created above")
            .write(&batch)
            .map_err(files_err)
    }

    /// Writes what is pending and closes every file.
    pub fn finish(mut self) -> Result<(), RatingError> {
        for b in 0..self.pending.len() {
            self.flush(b)?;
            if let Some(mut w) = self.writers[b].take() {
                w.finish().map_err(files_err)?;
            }
        }
        Ok(())
    }
}

/// `batches` as one batch, its rows ordered by resource key (ties in
/// their order: by batch, then by row), gathered in one copy.
///
/// Stage 2 visits a bucket's rows in resource-key order. Segments are in
/// time order, so without this each row it visits lies somewhere else in
/// a bucket of hundreds of megabytes: a cache miss per column per row,
/// which cost more than all the copying. With every batch sorted, that
/// visit reads each batch front to back, a few hundred sequential streams
/// at once.
pub fn sorted_by_resource(batches: &[RecordBatch]) -> Result<RecordBatch, RatingError> {
    let mut order: Vec<(u64, u64, u32, u32)> =
        Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    for (b, batch) in batches.iter().enumerate() {
        let hi: &UInt64Array = scan_column(batch, "resource_hi")?;
        let lo: &UInt64Array = scan_column(batch, "resource_lo")?;
        for i in 0..batch.num_rows() {
            order.push((hi.value(i), lo.value(i), b as u32, i as u32));
        }
    }
    match batches {
        [] => return Err(files_err("no rows to sort")),
        [one] if order.is_sorted() => return Ok(one.clone()),
        _ => {}
    }
    order.sort_unstable();
    let positions: Vec<(usize, usize)> = order
        .into_iter()
        .map(|(_, _, b, i)| (b as usize, i as usize))
        .collect();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    interleave_record_batch(&refs, &positions).map_err(files_err)
}

fn bucket_file(dir: &Path, bucket: usize, task: usize) -> PathBuf {
    dir.join(format!("bucket-{bucket:05}-{task:03}.arrow"))
}

/// Reads every scan task's file of `bucket`, in task order.
pub fn read_bucket(
    dir: &Path,
    bucket: usize,
    tasks: usize,
) -> Result<Vec<RecordBatch>, RatingError> {
    let mut batches = Vec::new();
    for task in 0..tasks {
        let path = bucket_file(dir, bucket, task);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(files_err(format!("cannot open {}: {e}", path.display()))),
        };
        let reader =
            StreamReader::try_new(std::io::BufReader::new(file), None).map_err(files_err)?;
        for batch in reader {
            batches.push(batch.map_err(files_err)?);
        }
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    /// Sorting a batch by resource key keeps every row (with its other
    /// columns) and keeps rows of one key in their order.
    #[test]
    fn a_batch_sorted_by_resource_keeps_its_rows_and_their_order_within_a_key() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("resource_hi", DataType::UInt64, false),
            Field::new("resource_lo", DataType::UInt64, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let hi = [3u64, 1, 3, 1, 2, 1];
        let lo = [0u64, 5, 0, 4, 9, 5];
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt64Array::from(hi.to_vec())),
                Arc::new(UInt64Array::from(lo.to_vec())),
                Arc::new(Int64Array::from_iter_values(0..6)),
            ],
        )
        .unwrap();
        let sorted = sorted_by_resource(&[batch]).unwrap();
        let n = sorted
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        // (1,4) row 3; (1,5) rows 1 then 5; (2,9) row 4; (3,0) rows 0 then 2.
        assert_eq!(n.values().to_vec(), vec![3, 1, 5, 4, 0, 2]);
    }

    #[test]
    fn every_row_lands_in_its_bucket_once() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("project_id", DataType::Utf8, false),
            Field::new("resource_id", DataType::Utf8, false),
            Field::new("resource_hi", DataType::UInt64, false),
            Field::new("resource_lo", DataType::UInt64, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let dir = tempfile::tempdir().unwrap();
        let buckets = 7;
        let mut expected = vec![0usize; buckets];
        for task in 0..2 {
            let mut w = BucketWriter::new(dir.path(), task, buckets, schema.clone());
            for chunk in 0..3 {
                let n = 5000;
                let projects: Vec<String> = (0..n).map(|i| format!("p{}", i % 13)).collect();
                let resources: Vec<String> =
                    (0..n).map(|i| format!("r{}-{chunk}", i % 101)).collect();
                let (mut his, mut los) = (Vec::new(), Vec::new());
                for (p, r) in projects.iter().zip(&resources) {
                    expected[bucket_of(resource_key(p, r), buckets)] += 1;
                    his.push((resource_key(p, r) >> 64) as u64);
                    los.push(resource_key(p, r) as u64);
                }
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from(projects)),
                        Arc::new(StringArray::from(resources)),
                        Arc::new(UInt64Array::from(his)),
                        Arc::new(UInt64Array::from(los)),
                        Arc::new(Int64Array::from_iter_values(0..n as i64)),
                    ],
                )
                .unwrap();
                w.route(&batch).unwrap();
            }
            w.finish().unwrap();
        }
        let mut total = 0;
        for (b, want) in expected.iter().enumerate() {
            let read = read_bucket(dir.path(), b, 2).unwrap();
            // Each written batch is one sorted run of stage 2's visit.
            for batch in &read {
                let key = |c: usize| {
                    batch
                        .column(c)
                        .as_any()
                        .downcast_ref::<UInt64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                };
                let keys: Vec<(u64, u64)> = key(2).into_iter().zip(key(3)).collect();
                assert!(keys.is_sorted());
            }
            let batch = concat_batches(&schema, &read).unwrap();
            assert_eq!(batch.num_rows(), *want);
            let p = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let r = batch
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            for i in 0..batch.num_rows() {
                assert_eq!(bucket_of(resource_key(p.value(i), r.value(i)), buckets), b);
            }
            total += batch.num_rows();
        }
        assert_eq!(total, 2 * 3 * 5000);
    }
}
