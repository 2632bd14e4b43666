-- Carried state between rating runs: what each resource's gauges and
-- lifecycle states were at an instant, so that a run can start from it
-- instead of reading the whole history before its range.

-- The earliest event time of a flush: a flush committed after a snapshot
-- with records before the snapshot's instant makes that snapshot stale.
ALTER TABLE raw_flushes ADD COLUMN min_time_us BIGINT;
CREATE INDEX raw_flushes_by_created ON raw_flushes (created_at_us);

-- One Parquet file in the raw store per snapshot (under carry/).
CREATE TABLE rating_carry_snapshots (
    path          TEXT PRIMARY KEY,
    -- The instant whose state it holds: the last record before it, per
    -- resource and carried raw meter.
    as_of_us      BIGINT NOT NULL,
    -- When the run that wrote it read the segment catalog.
    created_at_us BIGINT NOT NULL,
    -- The raw meters it covers, sorted, comma-separated.
    meters        TEXT NOT NULL,
    row_count     BIGINT NOT NULL
);
CREATE INDEX rating_carry_snapshots_by_as_of ON rating_carry_snapshots (as_of_us);
