-- Each resource's month: the current daily cells of a UTC month added up
-- per project, resource, meter, unit, currency and attributes, with the
-- start of the resource's last day with usage. A tenant's top resources
-- over a month read one row per resource and meter here instead of about
-- thirty cells, each found through the coverage join (an account's month
-- was about 16,000 cells at 10,000 instances). Kept like the other levels
-- (tally-rate's `levels.rs`): recomputed for every month holding a dirty
-- day.
CREATE TABLE usage_resource_months (
    month_us        BIGINT NOT NULL,
    project_id      TEXT NOT NULL,
    resource_id     TEXT NOT NULL,
    meter           TEXT NOT NULL,
    unit            TEXT NOT NULL,
    currency        TEXT NOT NULL,
    attributes      TEXT NOT NULL,
    last_day_us     BIGINT NOT NULL,
    quantity_whole  BIGINT NOT NULL,
    quantity_micro  BIGINT NOT NULL,
    amount_whole    BIGINT NOT NULL,
    amount_nano     BIGINT NOT NULL,
    line_count      BIGINT NOT NULL,
    error_count     BIGINT NOT NULL
);
CREATE INDEX usage_resource_months_by_month ON usage_resource_months (month_us);
CREATE INDEX usage_resource_months_by_project ON usage_resource_months (project_id, month_us);
CREATE INDEX usage_resource_months_by_resource ON usage_resource_months (resource_id, month_us);

-- Rated usage already stored gets this level on the next refresh: every
-- day its coverage spans is marked.
WITH RECURSIVE days(d) AS (
    SELECT (MIN(from_us) / 86400000000) * 86400000000 FROM rated_coverage
    UNION ALL
    SELECT d + 86400000000 FROM days
    WHERE d + 86400000000 < (SELECT MAX(to_us) FROM rated_coverage)
)
INSERT INTO usage_summary_dirty (day_us) SELECT d FROM days WHERE d IS NOT NULL
ON CONFLICT (day_us) DO NOTHING;
