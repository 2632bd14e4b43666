-- Rating runs and which run's lines are current for which instants.
-- Rated lines themselves are Parquet files under rated/<run_id>/; a run's
-- files count only once its row says 'complete' and it holds coverage.

CREATE TABLE rating_runs (
    run_id          TEXT PRIMARY KEY,
    from_us         BIGINT NOT NULL,
    to_us           BIGINT NOT NULL,
    period_seconds  BIGINT NOT NULL,
    plan_id         TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed')),
    started_at_us   BIGINT NOT NULL,
    finished_at_us  BIGINT,
    records_read    BIGINT NOT NULL DEFAULT 0,
    duplicates      BIGINT NOT NULL DEFAULT 0,
    line_count      BIGINT NOT NULL DEFAULT 0,
    unpriced_lines  BIGINT NOT NULL DEFAULT 0,
    error_lines     BIGINT NOT NULL DEFAULT 0,
    amount          TEXT NOT NULL DEFAULT '0',
    currency        TEXT NOT NULL DEFAULT '',
    segments        TEXT NOT NULL DEFAULT '[]',
    files           TEXT NOT NULL DEFAULT '[]',
    message         TEXT
);

-- Half-open instant ranges [from_us, to_us) whose lines come from run_id.
-- Ranges never overlap: committing a run cuts older ranges in the same
-- transaction, which is what makes re-rating a period atomic.
CREATE TABLE rated_coverage (
    run_id   TEXT NOT NULL REFERENCES rating_runs (run_id),
    from_us  BIGINT NOT NULL,
    to_us    BIGINT NOT NULL,
    PRIMARY KEY (from_us)
);
