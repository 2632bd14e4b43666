-- Carried state between rating runs: what each resource's gauges and
-- lifecycle states were at an instant, so that a run can start from it
-- instead of reading the whole history before its range.

-- The earliest event time of a flush: a snapshot is stale when more
-- flushes with records before its instant exist than when it was taken.
ALTER TABLE raw_flushes ADD COLUMN min_time_us BIGINT;
CREATE INDEX raw_flushes_by_min_time ON raw_flushes (min_time_us);

-- One Parquet file in the raw store per snapshot (under carry/).
CREATE TABLE rating_carry_snapshots (
    path          TEXT PRIMARY KEY,
    -- The instant whose state it holds: the last record before it, per
    -- resource and carried raw meter.
    as_of_us      BIGINT NOT NULL,
    -- When the run that wrote it read the segment catalog.
    created_at_us BIGINT NOT NULL,
    -- How many flushes (compactions aside) with records before as_of the
    -- catalog held then: flushes are never deleted, so a larger count now
    -- means records it did not see.
    flushes_before BIGINT NOT NULL,
    -- The raw meters it covers, sorted, comma-separated.
    meters        TEXT NOT NULL,
    row_count     BIGINT NOT NULL
);
CREATE INDEX rating_carry_snapshots_by_as_of ON rating_carry_snapshots (as_of_us);

-- The instant of the carry snapshot a run started from (NULL: it read the
-- whole history before its range, or carries nothing).
ALTER TABLE rating_runs ADD COLUMN carried_from_us BIGINT;
