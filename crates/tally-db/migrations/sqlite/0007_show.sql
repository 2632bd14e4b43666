-- What the show module reads: daily cost cells of the current rated lines,
-- and the audit log of operators' writes.

-- One row per (run, UTC day, project, resource, meter, group values) cell
-- of a rating run's lines; [from_us, to_us) is the day cut to the run's
-- range. A run writes its cells while it rates; a cell counts only while
-- its run's coverage holds all of [from_us, to_us) (the join that makes
-- rated lines current), so a re-rating replaces cells atomically with its
-- commit, and one that cuts an older run mid-day rebuilds that run's cell
-- for the rest of the day in the same transaction. Amounts are in billionths and quantities in
-- millionths of a unit, rounded half-even per cell: summaries are sums of
-- integers that the database adds exactly (docs/rounding.md).
CREATE TABLE usage_rollups (
    run_id          TEXT NOT NULL,
    from_us         BIGINT NOT NULL,
    to_us           BIGINT NOT NULL,
    project_id      TEXT NOT NULL,
    resource_id     TEXT NOT NULL,
    meter           TEXT NOT NULL,
    unit            TEXT NOT NULL,
    currency        TEXT NOT NULL,
    attributes      TEXT NOT NULL,
    quantity_micro  BIGINT NOT NULL,
    amount_nano     BIGINT NOT NULL,
    line_count      BIGINT NOT NULL,
    error_count     BIGINT NOT NULL
);
CREATE INDEX usage_rollups_run ON usage_rollups (run_id, from_us);
CREATE INDEX usage_rollups_project ON usage_rollups (project_id, from_us);

-- Runs whose cells are complete. A run that committed before this table
-- existed (or whose cells were lost) is missing here, and the show module
-- builds its cells from its line files before it answers.
CREATE TABLE usage_rollup_runs (
    run_id  TEXT PRIMARY KEY
);

-- Every write an operator makes through the API: who, what, when, and the
-- state before and after (JSON), append-only.
CREATE TABLE audit_log (
    audit_id      INTEGER PRIMARY KEY,
    at_us         BIGINT NOT NULL,
    principal     TEXT NOT NULL,
    action        TEXT NOT NULL,
    subject       TEXT NOT NULL,
    before_state  TEXT,
    after_state   TEXT
);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
