-- Each project's day with every meter together, for daily questions asked
-- only by project or account (a tenant's cost-per-day chart reads one row
-- per project and day here instead of one per meter as well: about 5,600
-- rows for an account of 13 projects at 10,000 instances). Units are kept
-- as the least and greatest, as in usage_project_month_totals. Kept like
-- the other levels (tally-rate's `levels.rs`), for the dirty days.
CREATE TABLE usage_project_day_totals (
    day_us          BIGINT NOT NULL,
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
CREATE INDEX usage_project_day_totals_by_day ON usage_project_day_totals (day_us);
CREATE INDEX usage_project_day_totals_by_project ON usage_project_day_totals (project_id, day_us);

-- Rated usage already stored gets this level on the next refresh.
WITH RECURSIVE days(d) AS (
    SELECT (MIN(from_us) / 86400000000) * 86400000000 FROM rated_coverage
    UNION ALL
    SELECT d + 86400000000 FROM days
    WHERE d + 86400000000 < (SELECT MAX(to_us) FROM rated_coverage)
)
INSERT INTO usage_summary_dirty (day_us) SELECT d FROM days WHERE d IS NOT NULL
ON CONFLICT (day_us) DO NOTHING;
