//! The segment catalog: the billing database's list of Parquet segments.
//!
//! A segment file is part of the store only once its row is committed here;
//! readers never list the object store. That makes a flush atomic: files are
//! written first, then one transaction inserts the flush row and all its
//! segment rows.

use tally_db::Pool;

/// Errors of the catalog.
pub type CatalogError = sqlx::Error;

/// One cataloged segment.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct SegmentEntry {
    /// Path relative to the raw store root.
    pub path: String,
    /// The flush that wrote it.
    pub flush_id: String,
    /// The event date (UTC) of its records, `YYYY-MM-DD`.
    pub partition_date: String,
    /// Earliest event time, µs.
    pub min_time_us: i64,
    /// Latest event time, µs.
    pub max_time_us: i64,
    /// Earliest receive time, µs.
    pub min_received_us: i64,
    /// Latest receive time, µs.
    pub max_received_us: i64,
    /// Number of records.
    pub row_count: i64,
    /// File size in bytes.
    pub byte_size: i64,
}

/// How a flush came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOrigin {
    /// A write-ahead log file.
    Wal(u64),
    /// A file import.
    Import,
    /// A compaction of earlier segments.
    Compaction,
}

/// Commits a flush and its segments in one transaction; with `retire`, the
/// listed segments are marked compacted in the same transaction. The
/// (project, domain) pairs its records named are recorded with it
/// (`keystone_projects`), so billing accounts that own a domain find new
/// projects as soon as their usage is stored.
pub async fn commit_flush(
    pool: &Pool,
    flush_id: &str,
    origin: FlushOrigin,
    segments: &[SegmentEntry],
    retire: &[String],
    projects: &std::collections::BTreeSet<(String, String)>,
    now_us: i64,
) -> Result<(), CatalogError> {
    let mut tx = pool.begin().await?;
    let (origin_name, wal_seq) = match origin {
        FlushOrigin::Wal(seq) => ("wal", Some(seq as i64)),
        FlushOrigin::Import => ("import", None),
        FlushOrigin::Compaction => ("compaction", None),
    };
    let count: i64 = segments.iter().map(|s| s.row_count).sum();
    // Rating reads this to tell whether a carry snapshot taken before this
    // flush missed records (see tally-rate's `carry` module).
    let min_time_us = segments.iter().map(|s| s.min_time_us).min();
    sqlx::query(
        "INSERT INTO raw_flushes (flush_id, origin, wal_seq, record_count, created_at_us, min_time_us) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(flush_id)
    .bind(origin_name)
    .bind(wal_seq)
    .bind(count)
    .bind(now_us)
    .bind(min_time_us)
    .execute(&mut *tx)
    .await?;
    for s in segments {
        sqlx::query(
            "INSERT INTO raw_segments (path, flush_id, partition_date, min_time_us, max_time_us, min_received_us, max_received_us, row_count, byte_size, state, created_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', $10)",
        )
        .bind(&s.path)
        .bind(flush_id)
        .bind(&s.partition_date)
        .bind(s.min_time_us)
        .bind(s.max_time_us)
        .bind(s.min_received_us)
        .bind(s.max_received_us)
        .bind(s.row_count)
        .bind(s.byte_size)
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
    }
    for (project, domain) in projects {
        sqlx::query(
            "INSERT INTO keystone_projects (project_id, domain_id, updated_at_us) VALUES ($1, $2, $3) \
             ON CONFLICT (project_id) DO UPDATE SET domain_id = excluded.domain_id, updated_at_us = excluded.updated_at_us",
        )
        .bind(project)
        .bind(domain)
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
    }
    for path in retire {
        let done = sqlx::query(
            "UPDATE raw_segments SET state = 'compacted', retired_at_us = $1 WHERE path = $2 AND state = 'active'",
        )
        .bind(now_us)
        .bind(path)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            // Someone else compacted it first: abandon this compaction.
            return Err(sqlx::Error::RowNotFound);
        }
    }
    tx.commit().await
}

/// Whether a flush is committed.
pub async fn flush_exists(pool: &Pool, flush_id: &str) -> Result<bool, CatalogError> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_flushes WHERE flush_id = $1")
        .bind(flush_id)
        .fetch_one(pool)
        .await?;
    Ok(n > 0)
}

/// Ids of all committed flushes.
pub async fn flush_ids(pool: &Pool) -> Result<Vec<String>, CatalogError> {
    sqlx::query_scalar("SELECT flush_id FROM raw_flushes")
        .fetch_all(pool)
        .await
}

/// The highest log sequence number ever flushed.
pub async fn max_wal_seq(pool: &Pool) -> Result<Option<u64>, CatalogError> {
    let v: Option<i64> = sqlx::query_scalar("SELECT max(wal_seq) FROM raw_flushes")
        .fetch_one(pool)
        .await?;
    Ok(v.map(|v| v as u64))
}

macro_rules! segment_columns {
    () => {
        "path, flush_id, partition_date, min_time_us, max_time_us, min_received_us, max_received_us, row_count, byte_size"
    };
}

/// Active segments whose event times overlap `[from_us, to_us)`.
pub async fn active_segments(
    pool: &Pool,
    from_us: i64,
    to_us: i64,
) -> Result<Vec<SegmentEntry>, CatalogError> {
    sqlx::query_as(concat!(
        "SELECT ",
        segment_columns!(),
        " FROM raw_segments WHERE state = 'active' AND max_time_us >= $1 AND min_time_us < $2 ORDER BY min_time_us, path"
    ))
    .bind(from_us)
    .bind(to_us)
    .fetch_all(pool)
    .await
}

/// Active segments of one partition, smallest first.
pub async fn partition_segments(
    pool: &Pool,
    partition_date: &str,
) -> Result<Vec<SegmentEntry>, CatalogError> {
    sqlx::query_as(concat!(
        "SELECT ",
        segment_columns!(),
        " FROM raw_segments WHERE state = 'active' AND partition_date = $1 ORDER BY row_count, path"
    ))
    .bind(partition_date)
    .fetch_all(pool)
    .await
}

/// Partitions with at least `min_segments` active segments below `max_rows`.
pub async fn compactable_partitions(
    pool: &Pool,
    min_segments: i64,
    max_rows: i64,
) -> Result<Vec<String>, CatalogError> {
    sqlx::query_scalar(
        "SELECT partition_date FROM raw_segments WHERE state = 'active' AND row_count < $1 GROUP BY partition_date HAVING count(*) >= $2 ORDER BY partition_date",
    )
    .bind(max_rows)
    .bind(min_segments)
    .fetch_all(pool)
    .await
}

/// Segments retired before `before_us`, whose files may now be deleted.
pub async fn retired_before(pool: &Pool, before_us: i64) -> Result<Vec<String>, CatalogError> {
    sqlx::query_scalar(
        "SELECT path FROM raw_segments WHERE state = 'compacted' AND retired_at_us < $1",
    )
    .bind(before_us)
    .fetch_all(pool)
    .await
}

/// Forgets a retired segment whose file was deleted.
pub async fn forget_segment(pool: &Pool, path: &str) -> Result<(), CatalogError> {
    sqlx::query("DELETE FROM raw_segments WHERE path = $1 AND state = 'compacted'")
        .bind(path)
        .execute(pool)
        .await?;
    Ok(())
}

/// All segment paths the catalog knows (active or retired).
pub async fn all_paths(pool: &Pool) -> Result<Vec<String>, CatalogError> {
    sqlx::query_scalar("SELECT path FROM raw_segments")
        .fetch_all(pool)
        .await
}

/// Summary figures of the store.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogStats {
    /// Active segments.
    pub segments: i64,
    /// Records in active segments.
    pub records: i64,
    /// Bytes in active segments.
    pub bytes: i64,
}

/// Counts active segments, records and bytes.
pub async fn stats(pool: &Pool) -> Result<CatalogStats, CatalogError> {
    let (segments, records, bytes): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT count(*), CAST(sum(row_count) AS BIGINT), CAST(sum(byte_size) AS BIGINT) FROM raw_segments WHERE state = 'active'",
    )
    .fetch_one(pool)
    .await?;
    Ok(CatalogStats {
        segments,
        records: records.unwrap_or(0),
        bytes: bytes.unwrap_or(0),
    })
}
