-- API keys. Only a SHA-256 hash of the secret is kept; the secret is shown once.
CREATE TABLE api_keys (
    key_id        TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'account_reader', 'project_reader')),
    scope_id      TEXT,
    label         TEXT NOT NULL DEFAULT '',
    created_at_us BIGINT NOT NULL,
    revoked_at_us BIGINT,
    last_used_us  BIGINT,
    CHECK ((role = 'admin' AND scope_id IS NULL) OR (role <> 'admin' AND scope_id IS NOT NULL))
);
