-- Price plans as applied: the document is kept as given, so a plan can be
-- shown, diffed and re-validated exactly as the operator wrote it.
CREATE TABLE price_plans (
    plan_id        TEXT PRIMARY KEY,
    format         TEXT NOT NULL CHECK (format IN ('toml', 'cloudkitty')),
    currency       TEXT NOT NULL,
    document       TEXT NOT NULL,
    is_default     BOOLEAN NOT NULL DEFAULT FALSE,
    applied_at_us  BIGINT NOT NULL
);

-- Meter definitions in force (one row: the document as given).
CREATE TABLE meter_definitions (
    singleton      INTEGER PRIMARY KEY CHECK (singleton = 1),
    document       TEXT NOT NULL,
    applied_at_us  BIGINT NOT NULL
);
