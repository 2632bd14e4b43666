//! Carried state between rating runs.
//!
//! A gauge (a volume's size) is billed from its last value until the next
//! one or the resource's deletion, and an instance's state from its last
//! lifecycle record; both may be weeks old when a range starts. Reading the
//! whole history before every range would make a run's cost grow with the
//! age of the cloud, and reading a fixed look-back (an earlier version read
//! two days) silently bills nothing for a volume last notified before it.
//!
//! So every run leaves two **carry snapshots** in the raw store: for each
//! resource, the last record of every carried raw meter (those taken by a
//! `time_weighted` or `state_duration` definition) before the range's start
//! and before its end. The next run starts from the latest snapshot at or
//! before its own start and reads only the records after it.
//!
//! A snapshot is only as good as the records it saw. It keeps how many
//! flushes with records before its instant the catalog held when it was
//! taken; flushes are never deleted, so when there are more now, records
//! arrived late (late usage, an import of history) that it did not see: it
//! is **stale**, and stale snapshots are never used. The run falls back to
//! an older snapshot, or to the whole history when there is none.
//! Compactions rewrite records without adding any, so they are not counted.
//!
//! A resource whose records say it was deleted is left out of the snapshot
//! at the range's end: nothing of it carries further.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Decimal128Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tally_db::Database;
use tally_store::objects::RawObjects;

use crate::aggregate::RawUsage;
use crate::job::RatingError;
use crate::shuffle::resource_key;

/// A usable snapshot found for a run.
#[derive(Debug, Clone, PartialEq)]
pub struct CarrySnapshot {
    /// Path in the raw store.
    pub path: String,
    /// The instant whose state it holds.
    pub as_of: DateTime<Utc>,
}

/// One carried record of one resource.
#[derive(Debug, Clone)]
pub struct CarriedRecord {
    /// The resource's project.
    pub project: String,
    /// The resource.
    pub resource: String,
    /// Its last record of one carried raw meter.
    pub record: RawUsage,
}

/// Where snapshot files live in the raw store (beside `segments/`, never
/// listed by the store's orphan clean-up).
const PREFIX: &str = "carry";

fn files_err(e: impl std::fmt::Display) -> RatingError {
    RatingError::Files(format!("carry snapshot: {e}"))
}

fn meters_text(meters: &[String]) -> String {
    meters.join(",")
}

/// Flushes (compactions aside) holding records before `as_of`, now. Read
/// before the segment catalog, so every flush counted is one the run reads.
pub async fn flushes_before(db: &Database, as_of: DateTime<Utc>) -> Result<i64, RatingError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM raw_flushes WHERE origin <> 'compaction' AND min_time_us < $1",
    )
    .bind(as_of.timestamp_micros())
    .fetch_one(&db.pool)
    .await?)
}

/// The staleness test of a snapshot row `s`, in SQL.
const FRESH: &str = "s.flushes_before = (SELECT count(*) FROM raw_flushes f \
     WHERE f.origin <> 'compaction' AND f.min_time_us < s.as_of_us)";

/// The latest snapshot at or before `at` that is not stale and covers every
/// raw meter in `meters`.
pub async fn usable_snapshot(
    db: &Database,
    at: DateTime<Utc>,
    meters: &[String],
) -> Result<Option<CarrySnapshot>, RatingError> {
    let sql = format!(
        "SELECT s.path, s.as_of_us, s.meters FROM rating_carry_snapshots s \
         WHERE s.as_of_us <= $1 AND {FRESH} ORDER BY s.as_of_us DESC, s.created_at_us DESC"
    );
    let rows: Vec<(String, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(at.timestamp_micros())
        .fetch_all(&db.pool)
        .await?;
    let wanted: BTreeSet<&str> = meters.iter().map(String::as_str).collect();
    for (path, as_of_us, covered) in rows {
        let covered: BTreeSet<&str> = covered.split(',').filter(|m| !m.is_empty()).collect();
        if wanted.is_subset(&covered) {
            let as_of = DateTime::from_timestamp_micros(as_of_us)
                .ok_or_else(|| files_err(format!("{path}: instant {as_of_us} out of range")))?;
            return Ok(Some(CarrySnapshot { path, as_of }));
        }
    }
    Ok(None)
}

fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("key_hi", DataType::UInt64, false),
        Field::new("key_lo", DataType::UInt64, false),
        Field::new("time", ts.clone(), false),
        Field::new("received_at", ts, false),
        Field::new("project_id", DataType::Utf8, false),
        Field::new("resource_id", DataType::Utf8, false),
        Field::new("meter", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new(
            "volume",
            DataType::Decimal128(38, tally_store::segment::VOLUME_SCALE as i8),
            false,
        ),
        Field::new("unit", DataType::Utf8, true),
        Field::new("attributes", DataType::Utf8, false),
        Field::new("segment_path", DataType::Utf8, false),
    ]))
}

/// Encodes carried records as one Parquet file.
fn encode(rows: &[CarriedRecord], segment_paths: &[String]) -> Result<Vec<u8>, RatingError> {
    let micros = |t: DateTime<Utc>| t.timestamp_micros();
    let text = |f: &dyn Fn(&CarriedRecord) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| (r.record.key >> 64) as u64),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.record.key as u64),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| micros(r.record.time)))
                .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| micros(r.record.received_at)),
            )
            .with_timezone("UTC"),
        ),
        text(&|r| r.project.clone()),
        text(&|r| r.resource.clone()),
        text(&|r| r.record.meter.to_string()),
        text(&|r| r.record.kind.to_string()),
        Arc::new(
            Decimal128Array::from_iter_values(
                rows.iter()
                    .map(|r| tally_store::segment::volume_to_i128(r.record.volume)),
            )
            .with_precision_and_scale(38, tally_store::segment::VOLUME_SCALE as i8)
            .map_err(files_err)?,
        ),
        Arc::new(StringArray::from(
            rows.iter()
                .map(|r| r.record.unit.as_deref())
                .collect::<Vec<_>>(),
        )),
        text(&|r| serde_json::to_string(&*r.record.attributes).expect("attributes serialize")),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| {
            segment_paths
                .get(r.record.segment as usize)
                .map_or("", String::as_str)
        }))),
    ];
    let batch = RecordBatch::try_new(schema(), columns).map_err(files_err)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(files_err)?))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema(), Some(props)).map_err(files_err)?;
    writer.write(&batch).map_err(files_err)?;
    writer.close().map_err(files_err)?;
    Ok(out)
}

/// Reads a snapshot file into batches of the rating scan's keyed schema,
/// so its rows travel through the shuffle like scanned ones. Each row's
/// segment path is added to `segment_paths` (once) and its index stored.
pub fn decode(
    file: Bytes,
    keyed: &SchemaRef,
    segment_paths: &mut Vec<String>,
) -> Result<Vec<RecordBatch>, RatingError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(files_err)?
        .build()
        .map_err(files_err)?;
    let mut index: std::collections::HashMap<String, u32> = segment_paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i as u32))
        .collect();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(files_err)?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| files_err(format!("column '{name}' is missing")))
        };
        let strings = |name: &str| -> Result<StringArray, RatingError> {
            let c = column(name)?;
            Ok(cast(c, &DataType::Utf8)
                .map_err(files_err)?
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8")
                .clone())
        };
        let paths = strings("segment_path")?;
        let segments: UInt32Array = paths
            .iter()
            .map(|p| {
                let p = p.unwrap_or("");
                Some(match index.get(p) {
                    Some(&i) => i,
                    None => {
                        let i = segment_paths.len() as u32;
                        segment_paths.push(p.to_string());
                        index.insert(p.to_string(), i);
                        i
                    }
                })
            })
            .collect();
        let (projects, resources) = (strings("project_id")?, strings("resource_id")?);
        let keys: Vec<u128> = projects
            .iter()
            .zip(resources.iter())
            .map(|(p, r)| resource_key(p.unwrap_or(""), r.unwrap_or("")))
            .collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(keyed.fields().len());
        for field in keyed.fields() {
            let array: ArrayRef = match field.name().as_str() {
                "segment" => Arc::new(segments.clone()),
                "resource_hi" => Arc::new(UInt64Array::from_iter_values(
                    keys.iter().map(|k| (k >> 64) as u64),
                )),
                "resource_lo" => Arc::new(UInt64Array::from_iter_values(
                    keys.iter().map(|k| *k as u64),
                )),
                name => column(name)?.clone(),
            };
            let array = if array.data_type() == field.data_type() {
                array
            } else {
                cast(&array, field.data_type()).map_err(files_err)?
            };
            columns.push(array);
        }
        out.push(RecordBatch::try_new(keyed.clone(), columns).map_err(files_err)?);
    }
    Ok(out)
}

/// Writes a snapshot of `rows` as of `as_of` and records it; `taken` is
/// when the run read the segment catalog, and `flushes` what
/// [`flushes_before`] counted for `as_of` just before. Then forgets the
/// snapshots it makes useless: older ones of the same instant, and stale
/// ones.
#[allow(clippy::too_many_arguments)]
pub async fn save(
    db: &Database,
    raw: &RawObjects,
    as_of: DateTime<Utc>,
    taken: DateTime<Utc>,
    flushes: i64,
    meters: &[String],
    rows: &[CarriedRecord],
    segment_paths: &[String],
) -> Result<(), RatingError> {
    let bytes = encode(rows, segment_paths)?;
    let path = format!(
        "{PREFIX}/{}-{}.parquet",
        as_of.format("%Y%m%dT%H%M%S%.6fZ"),
        uuid::Uuid::new_v4().simple()
    );
    raw.put(&path, bytes).await.map_err(files_err)?;
    sqlx::query(
        "INSERT INTO rating_carry_snapshots (path, as_of_us, created_at_us, flushes_before, meters, row_count) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&path)
    .bind(as_of.timestamp_micros())
    .bind(taken.timestamp_micros())
    .bind(flushes)
    .bind(meters_text(meters))
    .bind(rows.len() as i64)
    .execute(&db.pool)
    .await?;
    let sql = format!(
        "SELECT s.path FROM rating_carry_snapshots s WHERE \
           EXISTS (SELECT 1 FROM rating_carry_snapshots n WHERE n.as_of_us = s.as_of_us \
                   AND n.meters = s.meters AND n.created_at_us > s.created_at_us) \
           OR NOT ({FRESH})"
    );
    let useless: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(&db.pool)
        .await?;
    for old in useless {
        sqlx::query("DELETE FROM rating_carry_snapshots WHERE path = $1")
            .bind(&old)
            .execute(&db.pool)
            .await?;
        if let Err(e) = raw.delete(&old).await {
            // The row is gone, so nothing reads the file; it only costs disk.
            tracing::warn!(error = %e, path = old, "could not delete a carry snapshot file");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use tally_core::MeterKind;

    fn record(meter: &str, hour: u32, volume: i64, segment: u32) -> CarriedRecord {
        let t = Utc.with_ymd_and_hms(2026, 10, 1, hour, 0, 0).unwrap();
        CarriedRecord {
            project: "p1".into(),
            resource: "vol-1".into(),
            record: RawUsage {
                meter: Arc::from(meter),
                time: t,
                received_at: t + Duration::seconds(3),
                key: (7u128 << 64) | 9,
                kind: MeterKind::Gauge,
                volume: rust_decimal::Decimal::new(volume, 1),
                unit: Some(Arc::from("GiB")),
                attributes: Arc::new(
                    serde_json::from_str(r#"{"volume_type":"ssd","size":8}"#).unwrap(),
                ),
                segment,
            },
        }
    }

    #[test]
    fn a_snapshot_reads_back_into_the_scan_schema_with_its_segments_reindexed() {
        let rows = vec![record("volume.size", 3, 1005, 1), record("vcpus", 4, 20, 0)];
        let written_paths = vec![
            "segments/a.parquet".to_string(),
            "segments/b.parquet".into(),
        ];
        let file = encode(&rows, &written_paths).unwrap();
        // The reading run scanned other segments: b is found again, a is
        // appended.
        let mut paths = vec!["segments/b.parquet".to_string()];
        let keyed: SchemaRef = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("meter", DataType::Utf8, false),
            Field::new("volume", DataType::Decimal128(38, 18), false),
            Field::new("unit", DataType::Utf8, true),
            Field::new("attributes", DataType::Utf8, false),
            Field::new("segment", DataType::UInt32, false),
            Field::new("key_hi", DataType::UInt64, false),
            Field::new("resource_hi", DataType::UInt64, false),
        ]));
        let batches = decode(Bytes::from(file), &keyed, &mut paths).unwrap();
        assert_eq!(paths, vec!["segments/b.parquet", "segments/a.parquet"]);
        let b = &batches[0];
        assert_eq!(b.schema(), keyed);
        let segment = b.column(5).as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!(segment.values().to_vec(), vec![0, 1]);
        let volume = b
            .column(2)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        assert_eq!(
            tally_store::segment::volume_from_i128(volume.value(0)).unwrap(),
            "100.5".parse().unwrap()
        );
        let key_hi = b.column(6).as_any().downcast_ref::<UInt64Array>().unwrap();
        assert_eq!(key_hi.value(0), 7);
        let resource_hi = b.column(7).as_any().downcast_ref::<UInt64Array>().unwrap();
        assert_eq!(
            resource_hi.value(1),
            (resource_key("p1", "vol-1") >> 64) as u64
        );
        let attributes = b.column(4).as_any().downcast_ref::<StringArray>().unwrap();
        let parsed: serde_json::Value = serde_json::from_str(attributes.value(0)).unwrap();
        assert_eq!(parsed["size"], 8);
    }
}
