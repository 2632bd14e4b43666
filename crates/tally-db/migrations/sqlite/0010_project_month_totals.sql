-- A fourth summary level: each project's month, all meters together, for
-- questions grouped by project or account only (a month's cost per
-- account reads one row per project). Units are not kept apart: the least
-- and greatest unit say whether the row has one quantity.
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

-- Built from the month level on the next refresh.
WITH RECURSIVE days(d) AS (
    SELECT (MIN(from_us) / 86400000000) * 86400000000 FROM rated_coverage
    UNION ALL
    SELECT d + 86400000000 FROM days
    WHERE d + 86400000000 < (SELECT MAX(to_us) FROM rated_coverage)
)
INSERT INTO usage_summary_dirty (day_us) SELECT d FROM days WHERE d IS NOT NULL
ON CONFLICT (day_us) DO NOTHING;
