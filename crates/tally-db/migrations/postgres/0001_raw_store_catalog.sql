-- The raw usage store's catalog: which Parquet segments exist and what they hold.
-- Instants are BIGINT microseconds since the Unix epoch (portable to PostgreSQL).

-- One row per durable write of records into segments: a flushed write-ahead
-- log file, a file import, or a compaction. A flush row is committed in the
-- same transaction as its segments, so its presence means "fully written".
CREATE TABLE raw_flushes (
    flush_id      TEXT PRIMARY KEY,
    origin        TEXT NOT NULL CHECK (origin IN ('wal', 'import', 'compaction')),
    wal_seq       BIGINT,
    record_count  BIGINT NOT NULL,
    created_at_us BIGINT NOT NULL
);

CREATE TABLE raw_segments (
    path             TEXT PRIMARY KEY,
    flush_id         TEXT NOT NULL REFERENCES raw_flushes (flush_id),
    partition_date   TEXT NOT NULL,
    min_time_us      BIGINT NOT NULL,
    max_time_us      BIGINT NOT NULL,
    min_received_us  BIGINT NOT NULL,
    max_received_us  BIGINT NOT NULL,
    row_count        BIGINT NOT NULL,
    byte_size        BIGINT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('active', 'compacted')),
    created_at_us    BIGINT NOT NULL,
    retired_at_us    BIGINT
);

CREATE INDEX raw_segments_by_time ON raw_segments (state, min_time_us, max_time_us);
CREATE INDEX raw_segments_by_partition ON raw_segments (state, partition_date);
