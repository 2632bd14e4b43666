-- Coarser levels of the current daily cells, so that summaries that need
-- neither resources nor single runs add up far fewer rows: per project ×
-- meter × day, per project × meter × calendar month (UTC), per project ×
-- month with every meter together, and per meter × day over the whole
-- cloud. Unlike `usage_rollups`, these hold only what
-- is current (no run id, no coverage join): they are recomputed, for the
-- days a rating commit or a cell rebuild marks in `usage_summary_dirty`,
-- before any summary answers (tally-rate's `levels.rs`).
--
-- Quantities and amounts are kept as a whole part and a fraction (in
-- millionths and billionths, with the whole part's sign), because a
-- project's month of bytes in millionths overflows 64 bits; the sum of
-- the two parts is exact.
CREATE TABLE usage_project_days (
    day_us          BIGINT NOT NULL,
    project_id      TEXT NOT NULL,
    meter           TEXT NOT NULL,
    unit            TEXT NOT NULL,
    currency        TEXT NOT NULL,
    attributes      TEXT NOT NULL,
    quantity_whole  BIGINT NOT NULL,
    quantity_micro  BIGINT NOT NULL,
    amount_whole    BIGINT NOT NULL,
    amount_nano     BIGINT NOT NULL,
    line_count      BIGINT NOT NULL,
    error_count     BIGINT NOT NULL
);
CREATE INDEX usage_project_days_by_day ON usage_project_days (day_us);
CREATE INDEX usage_project_days_by_project ON usage_project_days (project_id, day_us);

CREATE TABLE usage_project_months (
    month_us        BIGINT NOT NULL,
    project_id      TEXT NOT NULL,
    meter           TEXT NOT NULL,
    unit            TEXT NOT NULL,
    currency        TEXT NOT NULL,
    attributes      TEXT NOT NULL,
    quantity_whole  BIGINT NOT NULL,
    quantity_micro  BIGINT NOT NULL,
    amount_whole    BIGINT NOT NULL,
    amount_nano     BIGINT NOT NULL,
    line_count      BIGINT NOT NULL,
    error_count     BIGINT NOT NULL
);
CREATE INDEX usage_project_months_by_month ON usage_project_months (month_us);
CREATE INDEX usage_project_months_by_project ON usage_project_months (project_id, month_us);

-- Each project's month with every meter together, for questions grouped
-- by project or account only (a month's cost per account reads one row
-- per project). Units are not kept apart: the least and greatest unit say
-- whether the row has one quantity.
CREATE TABLE usage_project_month_totals (
    month_us        BIGINT NOT NULL,
    project_id      TEXT NOT NULL,
    currency        TEXT NOT NULL,
    unit_min        TEXT NOT NULL,
    unit_max        TEXT NOT NULL,
    quantity_whole  BIGINT NOT NULL,
    quantity_micro  BIGINT NOT NULL,
    amount_whole    BIGINT NOT NULL,
    amount_nano     BIGINT NOT NULL,
    line_count      BIGINT NOT NULL,
    error_count     BIGINT NOT NULL
);
CREATE INDEX usage_project_month_totals_by_month ON usage_project_month_totals (month_us);
CREATE INDEX usage_project_month_totals_by_project ON usage_project_month_totals (project_id, month_us);

CREATE TABLE usage_cloud_days (
    day_us          BIGINT NOT NULL,
    meter           TEXT NOT NULL,
    unit            TEXT NOT NULL,
    currency        TEXT NOT NULL,
    attributes      TEXT NOT NULL,
    quantity_whole  BIGINT NOT NULL,
    quantity_micro  BIGINT NOT NULL,
    amount_whole    BIGINT NOT NULL,
    amount_nano     BIGINT NOT NULL,
    line_count      BIGINT NOT NULL,
    error_count     BIGINT NOT NULL
);
CREATE INDEX usage_cloud_days_by_day ON usage_cloud_days (day_us);

-- UTC days (their first microsecond) whose levels must be recomputed.
CREATE TABLE usage_summary_dirty (
    day_us  BIGINT PRIMARY KEY
);

-- A database that already holds rated usage gets its levels built on the
-- first summary: every day its coverage spans is marked.
WITH RECURSIVE days(d) AS (
    SELECT (MIN(from_us) / 86400000000) * 86400000000 FROM rated_coverage
    UNION ALL
    SELECT d + 86400000000 FROM days
    WHERE d + 86400000000 < (SELECT MAX(to_us) FROM rated_coverage)
)
INSERT INTO usage_summary_dirty (day_us) SELECT d FROM days WHERE d IS NOT NULL;
