//! Parquet segments: the long-term form of raw usage records.
//!
//! One segment holds records of one event-date partition, sorted by
//! (time, source, id), compressed with zstd. The schema is the contract with
//! the rating engine, which scans these files with DataFusion:
//!
//! | column | type | note |
//! |---|---|---|
//! | id, source | Utf8 | the idempotency key |
//! | time, received_at | Timestamp(µs, UTC) | |
//! | project_id, resource_id, meter | Utf8 | |
//! | user_id, domain_id, unit | Utf8, nullable | |
//! | kind | Utf8 | gauge, delta, cumulative |
//! | volume | Decimal128(38, 18) | exact; validation keeps inputs within it |
//! | attributes | Utf8 | a JSON object of scalars, keys sorted |
//! | payload | Binary, nullable | the record exactly as received; null: the same bytes as the row before |
//!
//! A notification becomes several records (a Nova audit: the instance, its
//! vCPUs, RAM and disk) that share its bytes and sit side by side in the
//! sort order. Writing those bytes once per run of equal payloads, not once
//! per record (copied, in freshly zeroed pages, compressed), took 7.5% off
//! the notification consumer's CPU (docs/benchmarks.md). Only [`read_batches`] reads
//! the column, and it restores every row's bytes; the rating scan never
//! selects it.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Decimal128Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{
    DataType, Decimal128Type, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rust_decimal::Decimal;
use tally_core::{Attributes, UsageRecord};

use crate::codec::{from_micros, same_bytes, to_micros};

/// Scale of the stored volume column.
pub const VOLUME_SCALE: u32 = 18;

/// Errors of encoding or decoding a segment.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// Arrow refused a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet refused the file.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A column held a value Tally never writes.
    #[error("segment holds an invalid value: {0}")]
    Invalid(String),
}

/// The Arrow schema of a segment.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("time", ts.clone(), false),
        Field::new("received_at", ts, false),
        Field::new("project_id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("domain_id", DataType::Utf8, true),
        Field::new("resource_id", DataType::Utf8, false),
        Field::new("meter", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new(
            "volume",
            DataType::Decimal128(38, VOLUME_SCALE as i8),
            false,
        ),
        Field::new("unit", DataType::Utf8, true),
        Field::new("attributes", DataType::Utf8, false),
        Field::new("payload", DataType::Binary, true),
    ]))
}

/// A volume as the stored i128 at scale 18.
pub fn volume_to_i128(v: Decimal) -> i128 {
    // Validation guarantees scale <= 18 and |v| < 1e20, so this is exact
    // and fits.
    v.mantissa() * 10i128.pow(VOLUME_SCALE - v.scale())
}

/// The stored i128 back as a normalized decimal.
pub fn volume_from_i128(mut m: i128) -> Result<Decimal, SegmentError> {
    // Every rated row goes through here and i128 division is slow: strip
    // trailing zeros in halving steps (at most 5 divisions, 1 for the
    // common whole-number volume) rather than one digit at a time.
    let mut scale = VOLUME_SCALE;
    for step in [18u32, 8, 4, 2, 1] {
        let p = 10i128.pow(step);
        while scale >= step && m % p == 0 {
            m /= p;
            scale -= step;
            if m == 0 {
                scale = 0;
                break;
            }
        }
    }
    Decimal::try_from_i128_with_scale(m, scale)
        .map_err(|e| SegmentError::Invalid(format!("volume: {e}")))
}

/// Builds one Arrow batch from records (in the given order).
pub fn to_batch(records: &[&UsageRecord]) -> Result<RecordBatch, SegmentError> {
    let n = records.len();
    // Exact sizes of the large columns, so their builders never grow (a
    // grown builder is copied, and its new pages zeroed by the kernel).
    let mut id_bytes = 0;
    let mut resource_bytes = 0;
    let mut payload_bytes = 0;
    // Whether each record's payload is the one before it (stored as null).
    let mut repeats = Vec::with_capacity(n);
    let mut previous_payload: Option<&Bytes> = None;
    for r in records {
        id_bytes += r.id.len();
        resource_bytes += r.resource_id.len();
        let repeat = previous_payload.is_some_and(|p| same_bytes(p, &r.payload));
        if !repeat {
            payload_bytes += r.payload.len();
            previous_payload = Some(&r.payload);
        }
        repeats.push(repeat);
    }
    let mut id = StringBuilder::with_capacity(n, id_bytes);
    let mut source = StringBuilder::with_capacity(n, n * 16);
    let mut time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut received = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut project = StringBuilder::with_capacity(n, n * 32);
    let mut user = StringBuilder::new();
    let mut domain = StringBuilder::new();
    let mut resource = StringBuilder::with_capacity(n, resource_bytes);
    let mut meter = StringBuilder::with_capacity(n, n * 12);
    let mut kind = StringBuilder::with_capacity(n, n * 5);
    let mut volume =
        Decimal128Builder::with_capacity(n).with_precision_and_scale(38, VOLUME_SCALE as i8)?;
    let mut unit = StringBuilder::new();
    let mut attributes = StringBuilder::with_capacity(n, n * 64);
    let mut payload = BinaryBuilder::with_capacity(n, payload_bytes);
    // Records of one message sit side by side (same time and source, ids
    // sharing a prefix): their equal attributes are serialized once.
    let mut attributes_json = crate::codec::AttributesJson::default();
    for (r, repeat) in records.iter().zip(repeats) {
        id.append_value(&r.id);
        source.append_value(&r.source);
        time.append_value(to_micros(r.time));
        received.append_value(to_micros(r.received_at));
        project.append_value(&r.project_id);
        user.append_option(r.user_id.as_deref());
        domain.append_option(r.domain_id.as_deref());
        resource.append_value(&r.resource_id);
        meter.append_value(&r.meter);
        kind.append_value(r.kind.as_str());
        volume.append_value(volume_to_i128(r.volume));
        unit.append_option(r.unit.as_deref());
        attributes.append_value(attributes_json.of(r).0);
        if repeat {
            payload.append_null();
        } else {
            payload.append_value(&r.payload);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(source.finish()),
        Arc::new(time.finish()),
        Arc::new(received.finish()),
        Arc::new(project.finish()),
        Arc::new(user.finish()),
        Arc::new(domain.finish()),
        Arc::new(resource.finish()),
        Arc::new(meter.finish()),
        Arc::new(kind.finish()),
        Arc::new(volume.finish()),
        Arc::new(unit.finish()),
        Arc::new(attributes.finish()),
        Arc::new(payload.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// Reads rows `rows` of a batch back into records.
pub fn from_batch(
    batch: &RecordBatch,
    rows: impl Iterator<Item = usize>,
) -> Result<Vec<UsageRecord>, SegmentError> {
    let s = |i: usize| batch.column(i).as_string::<i32>();
    let (id, source, project, user, domain, resource, meter, kind, unit, attrs) =
        (s(0), s(1), s(4), s(5), s(6), s(7), s(8), s(9), s(11), s(12));
    let time = batch.column(2).as_primitive::<TimestampMicrosecondType>();
    let received = batch.column(3).as_primitive::<TimestampMicrosecondType>();
    let volume = batch.column(10).as_primitive::<Decimal128Type>();
    let payload = batch.column(13).as_binary::<i32>();
    let opt =
        |a: &arrow::array::StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
    let mut out = Vec::new();
    for i in rows {
        let attributes: Attributes = serde_json::from_str(attrs.value(i))
            .map_err(|e| SegmentError::Invalid(format!("attributes: {e}")))?;
        out.push(UsageRecord {
            id: id.value(i).to_string(),
            source: source.value(i).to_string(),
            time: from_micros(time.value(i)),
            received_at: from_micros(received.value(i)),
            project_id: project.value(i).to_string(),
            user_id: opt(user, i),
            domain_id: opt(domain, i),
            resource_id: resource.value(i).to_string(),
            meter: meter.value(i).to_string(),
            kind: kind
                .value(i)
                .parse()
                .map_err(|e| SegmentError::Invalid(format!("{e}")))?,
            volume: volume_from_i128(volume.value(i))?,
            unit: opt(unit, i),
            attributes,
            payload: Bytes::copy_from_slice(payload.value(i)),
        });
    }
    Ok(out)
}

/// Encodes records (already sorted) as one Parquet file.
pub fn encode(records: &[&UsageRecord], zstd_level: i32) -> Result<Vec<u8>, SegmentError> {
    // Ids and payloads are unique per row: a dictionary would only be built
    // to be thrown away, and statistics on payload bytes are never used.
    let unique = |c: &str| ColumnPath::from(c);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level)?))
        .set_max_row_group_row_count(Some(256 * 1024))
        .set_column_dictionary_enabled(unique("id"), false)
        .set_column_dictionary_enabled(unique("payload"), false)
        .set_column_statistics_enabled(unique("payload"), EnabledStatistics::None)
        .set_column_statistics_enabled(unique("attributes"), EnabledStatistics::None)
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema(), Some(props))?;
    for chunk in records.chunks(64 * 1024) {
        writer.write(&to_batch(chunk)?)?;
    }
    Ok(writer.into_inner()?)
}

/// Reads the record batches of a Parquet segment, every row's payload
/// restored (a null payload is the previous row's, across batches too).
pub fn read_batches(file: Bytes) -> Result<Vec<RecordBatch>, SegmentError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(64 * 1024)
        .build()?;
    let mut previous: Option<Vec<u8>> = None;
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(restore_payloads(batch?, &mut previous)?);
    }
    Ok(batches)
}

/// Replaces the null payloads of `batch` by the bytes of the row before;
/// `previous` carries the last row's bytes from one batch to the next.
fn restore_payloads(
    batch: RecordBatch,
    previous: &mut Option<Vec<u8>>,
) -> Result<RecordBatch, SegmentError> {
    const PAYLOAD: usize = 13;
    let column = batch.column(PAYLOAD).as_binary::<i32>();
    let n = batch.num_rows();
    let carry_last = |column: &arrow::array::BinaryArray, previous: &mut Option<Vec<u8>>| {
        if n > 0 {
            *previous = Some(column.value(n - 1).to_vec());
        }
    };
    if column.null_count() == 0 {
        carry_last(column, previous);
        return Ok(batch);
    }
    let mut restored = BinaryBuilder::with_capacity(n, column.values().len());
    let mut last: Option<&[u8]> = previous.as_deref();
    for i in 0..n {
        if column.is_valid(i) {
            last = Some(column.value(i));
        }
        let Some(bytes) = last else {
            return Err(SegmentError::Invalid(
                "payload: the first row names no payload to repeat".into(),
            ));
        };
        restored.append_value(bytes);
    }
    let restored = restored.finish();
    carry_last(&restored, previous);
    let mut columns = batch.columns().to_vec();
    columns[PAYLOAD] = Arc::new(restored);
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Decodes every record of a Parquet segment.
pub fn decode(file: Bytes) -> Result<Vec<UsageRecord>, SegmentError> {
    let mut out = Vec::new();
    for batch in read_batches(file)? {
        out.extend(from_batch(&batch, 0..batch.num_rows())?);
    }
    Ok(out)
}

/// The order records take inside a segment and in query results.
pub fn sort_key(r: &UsageRecord) -> (i64, &str, &str) {
    (to_micros(r.time), &r.source, &r.id)
}

/// Puts a flush's records in [`sort_key`] order (stable), computing each
/// record's key once, not twice per comparison: a flush sorts a few hundred
/// thousand records. Most of what is left is comparing ids, which share a
/// message's id as their prefix.
pub fn sort(records: &mut [&UsageRecord]) {
    records.sort_by_cached_key(|r| sort_key(r));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_flush_sorts_as_sort_key_orders(
            rows in proptest::collection::vec((0i64..4, 0u8..3, 0u64..50), 0..60)
        ) {
            // Few distinct times, sources and ids, so that ties on the
            // time and on the source are common.
            let records: Vec<UsageRecord> = rows
                .iter()
                .map(|(t, s, i)| {
                    let mut r = sample(*i);
                    r.time = from_micros(1_790_000_000_000_000 + t);
                    r.source = format!("source-{s}");
                    r
                })
                .collect();
            let mut sorted: Vec<&UsageRecord> = records.iter().collect();
            sort(&mut sorted);
            let mut expected: Vec<&UsageRecord> = records.iter().collect();
            expected.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
            // Pointers, not contents: the sort is stable, as the one before.
            let ptrs = |v: &[&UsageRecord]| v.iter().map(|r| *r as *const UsageRecord).collect::<Vec<_>>();
            prop_assert_eq!(ptrs(&sorted), ptrs(&expected));
        }
    }

    #[test]
    fn stored_volumes_come_back_normalized() {
        for text in [
            "0",
            "1",
            "-7",
            "120",
            "0.5",
            "1.000000000000000001",
            "99999999999999999999",
            "0.000000000000000001",
            "-0.25",
            "1000000000000000000",
        ] {
            let d: Decimal = text.parse().unwrap();
            let back = volume_from_i128(volume_to_i128(d)).unwrap();
            assert_eq!(back, d);
            assert_eq!(back.to_string(), d.normalize().to_string(), "{text}");
        }
    }

    #[test]
    fn records_survive_parquet() {
        let records: Vec<_> = (0..100).map(sample).collect();
        let refs: Vec<_> = records.iter().collect();
        let file = encode(&refs, 1).unwrap();
        let back = decode(Bytes::from(file)).unwrap();
        assert_eq!(back, records);
    }

    #[test]
    fn a_shared_payload_is_stored_once_and_read_back_on_every_row() {
        // Three messages of three records each, then a record whose payload
        // is equal in content but its own buffer.
        let mut records: Vec<_> = (0..10).map(sample).collect();
        for m in 0..3 {
            let shared = Bytes::from(vec![b'a' + m as u8; 5000]);
            for r in &mut records[m * 3..m * 3 + 3] {
                r.payload = shared.clone();
            }
        }
        records[9].payload = Bytes::from(records[8].payload.to_vec());
        let refs: Vec<_> = records.iter().collect();
        // Written once per run of equal payloads (equal in content counts):
        // 3 of 10 rows hold bytes.
        assert_eq!(to_batch(&refs).unwrap().column(13).null_count(), 7);
        let file = Bytes::from(encode(&refs, 1).unwrap());
        let batches = read_batches(file.clone()).unwrap();
        assert_eq!(batches[0].column(13).null_count(), 0);
        assert_eq!(decode(file).unwrap(), records);
    }

    #[test]
    fn a_repeated_payload_is_restored_across_batches() {
        let records: Vec<_> = (0..4).map(sample).collect();
        let mut shared = records.clone();
        for r in &mut shared {
            r.payload = records[0].payload.clone();
        }
        let refs: Vec<_> = shared.iter().collect();
        let batch = to_batch(&refs).unwrap();
        let (first, second) = (batch.slice(0, 2), batch.slice(2, 2));
        assert_eq!(second.column(13).null_count(), 2);
        let mut previous = None;
        let first = restore_payloads(first, &mut previous).unwrap();
        let second = restore_payloads(second, &mut previous).unwrap();
        let mut back = from_batch(&first, 0..2).unwrap();
        back.extend(from_batch(&second, 0..2).unwrap());
        assert_eq!(back, shared);
        // A file whose first row repeats nothing is refused, not guessed.
        let err = restore_payloads(batch.slice(1, 3), &mut None).unwrap_err();
        assert!(err.to_string().contains("first row"), "{err}");
    }

    proptest! {
        #[test]
        fn volumes_are_exact_through_storage(m in -99_999_999_999_999_999i64..99_999_999_999_999_999i64, s in 0u32..=18) {
            let v = Decimal::new(m, s).normalize();
            let back = volume_from_i128(volume_to_i128(v)).unwrap();
            prop_assert_eq!(back, v);
            prop_assert_eq!(back.to_string(), v.to_string());
        }
    }

    #[test]
    fn largest_volume_fits() {
        let v: Decimal = "99999999999999999999.999999".parse().unwrap();
        assert_eq!(volume_from_i128(volume_to_i128(v)).unwrap(), v);
    }
}

/// Row conditions evaluated on a segment's columns before any record is
/// built, so a query only materializes the rows it returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowFilter<'a> {
    /// Only this project.
    pub project_id: Option<&'a str>,
    /// Only this resource.
    pub resource_id: Option<&'a str>,
    /// Only this meter.
    pub meter: Option<&'a str>,
    /// Event time at or after, µs.
    pub from_us: i64,
    /// Event time before, µs.
    pub to_us: i64,
    /// Only rows sorting after this (time µs, source, id).
    pub after: Option<(i64, &'a str, &'a str)>,
}

/// The first `max` rows of `batch` (in batch order) that pass `filter`.
pub fn matching_rows(batch: &RecordBatch, filter: &RowFilter<'_>, max: usize) -> Vec<usize> {
    let s = |i: usize| batch.column(i).as_string::<i32>();
    let (id, source, project, resource, meter) = (s(0), s(1), s(4), s(7), s(8));
    let time = batch.column(2).as_primitive::<TimestampMicrosecondType>();
    let mut rows = Vec::new();
    for i in 0..batch.num_rows() {
        if rows.len() >= max {
            break;
        }
        let t = time.value(i);
        if t < filter.from_us || t >= filter.to_us {
            continue;
        }
        if filter.project_id.is_some_and(|p| p != project.value(i))
            || filter.resource_id.is_some_and(|r| r != resource.value(i))
            || filter.meter.is_some_and(|m| m != meter.value(i))
        {
            continue;
        }
        if let Some(after) = filter.after
            && (t, source.value(i), id.value(i)) <= after
        {
            continue;
        }
        rows.push(i);
    }
    rows
}
