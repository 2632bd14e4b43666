-- Budgets, alerts and signed webhook deliveries.

-- A spending limit per account (or one of its projects) and billing period,
-- with the percentages at which an alert is raised.
CREATE TABLE budgets (
    budget_id      TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES billing_accounts (account_id),
    project_id     TEXT,
    amount         TEXT NOT NULL,
    thresholds     TEXT NOT NULL,
    created_at_us  BIGINT NOT NULL
);

-- An alert is raised once per (subject, period, kind, level): the unique key
-- is what keeps repeated checks from alerting twice.
CREATE TABLE alerts (
    alert_id       TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES billing_accounts (account_id),
    kind           TEXT NOT NULL CHECK (kind IN ('budget', 'low_balance')),
    subject        TEXT NOT NULL,
    period         TEXT NOT NULL,
    level          TEXT NOT NULL,
    message        TEXT NOT NULL,
    body           TEXT NOT NULL,
    raised_at_us   BIGINT NOT NULL,
    UNIQUE (kind, subject, period, level)
);

CREATE TABLE webhooks (
    webhook_id     TEXT PRIMARY KEY,
    url            TEXT NOT NULL,
    secret         TEXT NOT NULL,
    account_id     TEXT REFERENCES billing_accounts (account_id),
    created_at_us  BIGINT NOT NULL
);

-- One row per (alert, webhook): its attempts and outcome.
CREATE TABLE webhook_deliveries (
    delivery_id         TEXT PRIMARY KEY,
    webhook_id          TEXT NOT NULL REFERENCES webhooks (webhook_id),
    alert_id            TEXT NOT NULL REFERENCES alerts (alert_id),
    status              TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_us  BIGINT NOT NULL,
    last_status         BIGINT,
    last_error          TEXT,
    delivered_at_us     BIGINT,
    UNIQUE (webhook_id, alert_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at_us);
