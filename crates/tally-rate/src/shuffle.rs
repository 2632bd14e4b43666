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
//!
//! What crosses the shuffle is a *compact* batch ([`compact_by_resource`]):
//! rows sorted by resource key, every text column dictionary-encoded with
//! only the values the batch uses. A resource's rows repeat its project,
//! id, kind, unit and mostly its attributes, so the text of a row (about
//! 250 bytes) becomes six 4-byte keys: less to copy, compress, write and
//! read back, and stage 2 parses each distinct attribute text once per
//! batch instead of hashing it on every row.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::builder::NullBufferBuilder;
use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, DictionaryArray, RecordBatch, StringArray, StringBuilder,
    StringViewArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
// foldhash, not SipHash: probed whenever a text value differs from the
// row before.
use datafusion::arrow::ipc::CompressionType;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use hashbrown::HashMap;

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

/// Rows of one scan batch waiting for their bucket's next write: the batch
/// (shared, not copied) and which of its rows.
type PendingRows = (RecordBatch, Vec<u32>);

/// One scan task's writers, one file per bucket (created on first use).
pub struct BucketWriter {
    dir: PathBuf,
    task: usize,
    /// The compact schema the files are written in.
    schema: SchemaRef,
    pending: Vec<Vec<PendingRows>>,
    pending_rows: Vec<usize>,
    flush_rows: usize,
    writers: Vec<Option<StreamWriter<BufWriter<File>>>>,
}

impl BucketWriter {
    /// Writers for scan task `task` under `dir`, for scanned rows of
    /// `schema`.
    pub fn new(dir: &Path, task: usize, buckets: usize, schema: &SchemaRef) -> BucketWriter {
        BucketWriter {
            dir: dir.to_path_buf(),
            task,
            schema: compact_schema(schema),
            pending: vec![Vec::new(); buckets],
            pending_rows: vec![0; buckets],
            flush_rows: (PENDING_ROWS / buckets.max(1)).clamp(MIN_FLUSH_ROWS, MAX_FLUSH_ROWS),
            writers: (0..buckets).map(|_| None).collect(),
        }
    }

    /// Routes a batch's rows to their buckets by its `resource_hi` column.
    /// The batch is held (its buffers shared) until every bucket it feeds
    /// has written: copying each bucket's rows out here would copy all the
    /// text that the write then reduces to dictionary keys.
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
            self.pending_rows[b] += indices.len();
            self.pending[b].push((batch.clone(), indices));
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
        let parts: Vec<(&RecordBatch, &[u32])> = self.pending[b]
            .iter()
            .map(|(batch, rows)| (batch, rows.as_slice()))
            .collect();
        let batch = compact_by_resource(&parts)?;
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

/// The schema of compact batches made from rows of `scanned`: every text
/// column (`Utf8` or `Utf8View`) becomes a dictionary of `Utf8` with `u32`
/// keys; the rest is unchanged.
pub fn compact_schema(scanned: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = scanned
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::Utf8View => f.as_ref().clone().with_data_type(
                DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
            ),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(
        fields,
        scanned.metadata().clone(),
    ))
}

/// The chosen rows of `parts` (batches of scanned rows, each with the row
/// indices taken from it) as one compact batch: rows ordered by resource
/// key (ties in their order: by part, then by row), text columns
/// dictionary-encoded (see the module's comment), in [`compact_schema`].
///
/// Stage 2 visits a bucket's rows in resource-key order. Segments are in
/// time order, so without the sort each row it visits lies somewhere else in
/// a bucket of hundreds of megabytes: a cache miss per column per row,
/// which cost more than all the copying. With every batch sorted, that
/// visit reads each batch front to back, a few hundred sequential streams
/// at once.
pub fn compact_by_resource(parts: &[(&RecordBatch, &[u32])]) -> Result<RecordBatch, RatingError> {
    let Some((first, _)) = parts.first() else {
        return Err(files_err("no rows to sort"));
    };
    let schema = first.schema();
    let mut order: Vec<(u64, u64, u32, u32)> =
        Vec::with_capacity(parts.iter().map(|(_, rows)| rows.len()).sum());
    for (p, (batch, rows)) in parts.iter().enumerate() {
        let hi: &UInt64Array = scan_column(batch, "resource_hi")?;
        let lo: &UInt64Array = scan_column(batch, "resource_lo")?;
        for &i in *rows {
            let i = i as usize;
            order.push((hi.value(i), lo.value(i), p as u32, i as u32));
        }
    }
    // Ties keep their pushed order, which is already (part, row).
    order.sort_unstable();
    let positions: Vec<(usize, usize)> = order
        .into_iter()
        .map(|(_, _, p, i)| (p as usize, i as usize))
        .collect();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for c in 0..schema.fields().len() {
        let sources: Vec<&dyn Array> = parts.iter().map(|(b, _)| b.column(c).as_ref()).collect();
        columns.push(match schema.field(c).data_type() {
            DataType::Utf8 | DataType::Utf8View => {
                let texts = sources
                    .iter()
                    .map(|a| Text::of(*a))
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(dictionary_of(&texts, &positions)?)
            }
            _ => interleave(&sources, &positions).map_err(files_err)?,
        });
    }
    RecordBatch::try_new(compact_schema(&schema), columns).map_err(files_err)
}

/// A text column of scanned rows: plain, or views (what the rating scan
/// reads: a view of a dictionary-encoded Parquet page points into the page's
/// dictionary instead of copying the text).
#[derive(Clone, Copy)]
enum Text<'a> {
    Plain(&'a StringArray),
    Views(&'a StringViewArray),
}

impl<'a> Text<'a> {
    fn of(array: &'a dyn Array) -> Result<Text<'a>, RatingError> {
        let any = array.as_any();
        if let Some(a) = any.downcast_ref::<StringArray>() {
            return Ok(Text::Plain(a));
        }
        any.downcast_ref::<StringViewArray>()
            .map(Text::Views)
            .ok_or_else(|| files_err(format!("a text column is {}", array.data_type())))
    }

    fn is_null(self, i: usize) -> bool {
        match self {
            Text::Plain(a) => a.is_null(i),
            Text::Views(a) => a.is_null(i),
        }
    }

    fn value(self, i: usize) -> &'a str {
        match self {
            Text::Plain(a) => a.value(i),
            Text::Views(a) => a.value(i),
        }
    }

    /// A value that is equal for two rows of this array only if their text
    /// is (the raw view: length, prefix, buffer and offset, or the inline
    /// text); `None` for plain arrays.
    fn identity(self, i: usize) -> Option<u128> {
        match self {
            Text::Plain(_) => None,
            Text::Views(a) => Some(a.views()[i]),
        }
    }
}

/// The text at `positions` of `columns`, as a dictionary holding each
/// distinct value once, in order of first use (so the same rows always give
/// the same batch).
fn dictionary_of(
    columns: &[Text<'_>],
    positions: &[(usize, usize)],
) -> Result<DictionaryArray<UInt32Type>, RatingError> {
    let mut keys = Vec::with_capacity(positions.len());
    let mut nulls = NullBufferBuilder::new(positions.len());
    let mut values = StringBuilder::new();
    let mut seen: HashMap<&str, u32> = HashMap::new();
    // Rows of one Parquet page share its dictionary, so equal text mostly
    // has an equal view: keys by (column, view) are found without reading
    // or hashing the text, which for attributes is hundreds of bytes.
    let mut by_identity: HashMap<(usize, u128), u32> = HashMap::new();
    // Rows come grouped by resource, whose project, id, kind and unit
    // repeat from row to row: the last value is checked first.
    let mut last: Option<(usize, u128, u32)> = None;
    for &(p, i) in positions {
        let column = columns[p];
        if column.is_null(i) {
            keys.push(0);
            nulls.append_null();
            continue;
        }
        nulls.append_non_null();
        let key = match column.identity(i) {
            Some(id) => match last {
                Some((lp, lid, key)) if lp == p && lid == id => key,
                _ => {
                    let key = match by_identity.get(&(p, id)) {
                        Some(&key) => key,
                        None => {
                            let key = intern(&mut seen, &mut values, column.value(i));
                            by_identity.insert((p, id), key);
                            key
                        }
                    };
                    last = Some((p, id, key));
                    key
                }
            },
            None => intern(&mut seen, &mut values, column.value(i)),
        };
        keys.push(key);
    }
    let keys = UInt32Array::new(keys.into(), nulls.finish());
    DictionaryArray::try_new(keys, Arc::new(values.finish())).map_err(files_err)
}

/// The key of `text` in the dictionary being built, added if new.
fn intern<'t>(seen: &mut HashMap<&'t str, u32>, values: &mut StringBuilder, text: &'t str) -> u32 {
    *seen.entry(text).or_insert_with(|| {
        values.append_value(text);
        (values.len() - 1) as u32
    })
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

    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
    use datafusion::arrow::compute::{cast, concat_batches};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    /// A compact batch's text column read back as plain strings.
    fn texts(batch: &RecordBatch, column: usize) -> Vec<Option<String>> {
        let plain = cast(batch.column(column), &DataType::Utf8).unwrap();
        plain
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    /// Text becomes a dictionary of the values the chosen rows use, each
    /// once; the rows read back as they were, nulls included.
    #[test]
    fn a_compact_batch_keeps_the_chosen_rows_text_in_a_dictionary_of_what_they_use() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("resource_hi", DataType::UInt64, false),
            Field::new("resource_lo", DataType::UInt64, false),
            Field::new("unit", DataType::Utf8, true),
        ]));
        let batch = |hi: Vec<u64>, units: Vec<Option<&str>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(UInt64Array::from(hi.clone())),
                    Arc::new(UInt64Array::from(vec![0; hi.len()])),
                    Arc::new(StringArray::from(units)),
                ],
            )
            .unwrap()
        };
        let a = batch(
            vec![2, 1, 2, 9],
            vec![Some("GB"), None, Some("GB"), Some("unused")],
        );
        let b = batch(vec![1, 2], vec![Some("s"), Some("GB")]);
        let compact = compact_by_resource(&[(&a, &[0, 1, 2]), (&b, &[0, 1])]).unwrap();
        assert_eq!(
            compact.schema().field(2).data_type(),
            &DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8))
        );
        // Key 1: a's row 1 then b's row 0; key 2: a's rows 0 and 2, b's row 1.
        assert_eq!(
            texts(&compact, 2),
            vec![
                None,
                Some("s".into()),
                Some("GB".into()),
                Some("GB".into()),
                Some("GB".into())
            ]
        );
        let dictionary = compact.column(2).as_dictionary::<UInt32Type>();
        let values: Vec<&str> = dictionary
            .values()
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        assert_eq!(values, vec!["s", "GB"]);
    }

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
        let all: Vec<u32> = (0..6).collect();
        let sorted = compact_by_resource(&[(&batch, &all)]).unwrap();
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
            let mut w = BucketWriter::new(dir.path(), task, buckets, &schema);
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
            let batch = concat_batches(&compact_schema(&schema), &read).unwrap();
            assert_eq!(batch.num_rows(), *want);
            for (p, r) in texts(&batch, 0).into_iter().zip(texts(&batch, 1)) {
                let key = resource_key(&p.unwrap(), &r.unwrap());
                assert_eq!(bucket_of(key, buckets), b);
            }
            total += batch.num_rows();
        }
        assert_eq!(total, 2 * 3 * 5000);
    }
}
