-- Billing: accounts, invoices, credit notes and the double-entry ledger.
-- Money is exact decimal text (rust_decimal), summed in Rust, never in SQL
-- floating point. Instants are BIGINT microseconds since the Unix epoch.

CREATE TABLE billing_accounts (
    account_id          TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    currency            TEXT NOT NULL,
    payment_mode        TEXT NOT NULL CHECK (payment_mode IN ('prepaid', 'postpaid')),
    billing_day         BIGINT NOT NULL DEFAULT 1 CHECK (billing_day BETWEEN 1 AND 28),
    timezone            TEXT NOT NULL DEFAULT 'UTC',
    taxes               TEXT NOT NULL DEFAULT '[]',
    minimum_commitment  TEXT,
    low_balance         TEXT,
    payment_terms_days  BIGINT NOT NULL DEFAULT 30,
    series              TEXT NOT NULL DEFAULT 'INV',
    contact             TEXT NOT NULL DEFAULT '{}',
    created_at_us       BIGINT NOT NULL
);

-- What an account owns: single Keystone projects, or whole domains (every
-- project of the domain, including ones created later). A project owned
-- directly wins over its domain's owner.
CREATE TABLE account_ownership (
    kind         TEXT NOT NULL CHECK (kind IN ('project', 'domain')),
    keystone_id  TEXT NOT NULL,
    account_id   TEXT NOT NULL REFERENCES billing_accounts (account_id),
    PRIMARY KEY (kind, keystone_id)
);

-- The Keystone domain of each project Tally has heard of: from usage records
-- that name one (recorded with each raw-store flush) and from operators.
CREATE TABLE keystone_projects (
    project_id     TEXT PRIMARY KEY,
    domain_id      TEXT NOT NULL,
    updated_at_us  BIGINT NOT NULL
);

-- Which plan prices an account's usage from an instant, until an optional
-- end; where assignments overlap, the one that started last wins.
CREATE TABLE plan_assignments (
    account_id  TEXT NOT NULL REFERENCES billing_accounts (account_id),
    from_us     BIGINT NOT NULL,
    to_us       BIGINT,
    plan_id     TEXT NOT NULL REFERENCES price_plans (plan_id),
    PRIMARY KEY (account_id, from_us),
    CHECK (to_us IS NULL OR to_us > from_us)
);

-- Coupons granted to an account, for N billing periods from a first one.
CREATE TABLE coupons (
    account_id    TEXT NOT NULL REFERENCES billing_accounts (account_id),
    code          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('percent', 'fixed')),
    value         TEXT NOT NULL,
    first_period  TEXT NOT NULL,
    periods       BIGINT NOT NULL CHECK (periods > 0),
    PRIMARY KEY (account_id, code)
);

-- Gapless numbering: a number is taken in the transaction that issues the
-- document, so a rolled-back issue gives its number back.
CREATE TABLE number_series (
    series       TEXT PRIMARY KEY,
    next_number  BIGINT NOT NULL
);

CREATE TABLE invoices (
    invoice_id         TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL REFERENCES billing_accounts (account_id),
    period             TEXT NOT NULL,
    period_start_us    BIGINT NOT NULL,
    period_end_us      BIGINT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('draft', 'finalized')),
    number             TEXT UNIQUE,
    currency           TEXT NOT NULL,
    subtotal           TEXT NOT NULL,
    discount_total     TEXT NOT NULL,
    commitment_top_up  TEXT NOT NULL,
    taxable            TEXT NOT NULL,
    tax_total          TEXT NOT NULL,
    total              TEXT NOT NULL,
    document           TEXT NOT NULL,
    revision           BIGINT NOT NULL DEFAULT 1,
    generated_at_us    BIGINT NOT NULL,
    issued_at_us       BIGINT,
    due_at_us          BIGINT,
    UNIQUE (account_id, period),
    CHECK ((status = 'draft' AND number IS NULL) OR (status = 'finalized' AND number IS NOT NULL AND issued_at_us IS NOT NULL))
);

-- (PostgreSQL: no row-by-row foreign key here; the statement trigger below
-- checks, once per statement, that every line's invoice exists and is a
-- draft: an invoice run inserts millions of lines.)
CREATE TABLE invoice_lines (
    invoice_id        TEXT NOT NULL,
    line_no           BIGINT NOT NULL,
    project_id        TEXT NOT NULL,
    meter             TEXT NOT NULL,
    unit              TEXT NOT NULL,
    plan_id           TEXT NOT NULL,
    service_start_us  BIGINT NOT NULL,
    service_end_us    BIGINT NOT NULL,
    quantity          TEXT NOT NULL,
    unit_price        TEXT,
    amount            TEXT NOT NULL,
    rounded_amount    TEXT NOT NULL,
    correction        BOOLEAN NOT NULL,
    PRIMARY KEY (invoice_id, line_no)
);

-- Paid or void is recorded beside a finalized invoice, never by changing it.
CREATE TABLE invoice_settlements (
    invoice_id     TEXT PRIMARY KEY REFERENCES invoices (invoice_id),
    status         TEXT NOT NULL CHECK (status IN ('paid', 'void')),
    reference      TEXT NOT NULL,
    settled_at_us  BIGINT NOT NULL
);

CREATE TABLE credit_notes (
    credit_note_id  TEXT PRIMARY KEY,
    number          TEXT NOT NULL UNIQUE,
    invoice_id      TEXT NOT NULL REFERENCES invoices (invoice_id),
    line_no         BIGINT,
    net             TEXT NOT NULL,
    tax             TEXT NOT NULL,
    total           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    issued_at_us    BIGINT NOT NULL
);
CREATE INDEX credit_notes_by_invoice ON credit_notes (invoice_id);

CREATE TABLE ledger_transactions (
    txn_id         TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    memo           TEXT NOT NULL,
    account_id     TEXT REFERENCES billing_accounts (account_id),
    reference      TEXT,
    created_at_us  BIGINT NOT NULL
);
CREATE INDEX ledger_transactions_by_account ON ledger_transactions (account_id, created_at_us);

CREATE TABLE ledger_entries (
    txn_id          TEXT NOT NULL REFERENCES ledger_transactions (txn_id),
    entry_no        BIGINT NOT NULL,
    ledger_account  TEXT NOT NULL,
    currency        TEXT NOT NULL,
    amount          TEXT NOT NULL,
    PRIMARY KEY (txn_id, entry_no)
);
CREATE INDEX ledger_entries_by_ledger_account ON ledger_entries (ledger_account);

-- Immutability, enforced by the database itself so that no code path (and
-- no hand-typed SQL) can change an issued document. Drafts stay editable.
-- TRUNCATE skips row triggers, so it gets its own statement triggers.
CREATE FUNCTION tally_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation';
END
$$;

-- Lines are checked once per statement against the rows it touched
-- (transition tables), not once per row: an invoice run inserts millions.
CREATE FUNCTION tally_invoice_lines_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM touched t JOIN invoices i ON i.invoice_id = t.invoice_id
               WHERE i.status = 'finalized') THEN
        RAISE EXCEPTION 'lines of a finalized invoice cannot be changed: issue a credit note'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF TG_OP <> 'DELETE' AND EXISTS (SELECT 1 FROM touched t
               WHERE NOT EXISTS (SELECT 1 FROM invoices i WHERE i.invoice_id = t.invoice_id)) THEN
        RAISE EXCEPTION 'an invoice line must belong to an existing invoice'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_finalized_no_update BEFORE UPDATE ON invoices
FOR EACH ROW WHEN (OLD.status = 'finalized')
EXECUTE FUNCTION tally_refuse('invoice is finalized and cannot be changed: issue a credit note');
CREATE TRIGGER invoices_finalized_no_delete BEFORE DELETE ON invoices
FOR EACH ROW WHEN (OLD.status = 'finalized')
EXECUTE FUNCTION tally_refuse('invoice is finalized and cannot be deleted: issue a credit note');
CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON invoices
FOR EACH STATEMENT EXECUTE FUNCTION tally_refuse('invoices cannot be truncated');

CREATE TRIGGER invoice_lines_frozen_insert AFTER INSERT ON invoice_lines
REFERENCING NEW TABLE AS touched
FOR EACH STATEMENT EXECUTE FUNCTION tally_invoice_lines_frozen();
CREATE TRIGGER invoice_lines_frozen_update_old AFTER UPDATE ON invoice_lines
REFERENCING OLD TABLE AS touched
FOR EACH STATEMENT EXECUTE FUNCTION tally_invoice_lines_frozen();
CREATE TRIGGER invoice_lines_frozen_update_new AFTER UPDATE ON invoice_lines
REFERENCING NEW TABLE AS touched
FOR EACH STATEMENT EXECUTE FUNCTION tally_invoice_lines_frozen();
CREATE TRIGGER invoice_lines_frozen_delete AFTER DELETE ON invoice_lines
REFERENCING OLD TABLE AS touched
FOR EACH STATEMENT EXECUTE FUNCTION tally_invoice_lines_frozen();
CREATE TRIGGER invoice_lines_no_truncate BEFORE TRUNCATE ON invoice_lines
FOR EACH STATEMENT EXECUTE FUNCTION tally_refuse('invoice lines cannot be truncated');

CREATE TRIGGER invoice_settlements_final BEFORE UPDATE OR DELETE ON invoice_settlements
FOR EACH ROW EXECUTE FUNCTION tally_refuse('a payment or void is final: record a credit note or an adjustment');
CREATE TRIGGER invoice_settlements_no_truncate BEFORE TRUNCATE ON invoice_settlements
FOR EACH STATEMENT EXECUTE FUNCTION tally_refuse('a payment or void is final: record a credit note or an adjustment');

CREATE TRIGGER credit_notes_final BEFORE UPDATE OR DELETE ON credit_notes
FOR EACH ROW EXECUTE FUNCTION tally_refuse('a credit note is final: issue another document to correct it');
CREATE TRIGGER credit_notes_no_truncate BEFORE TRUNCATE ON credit_notes
FOR EACH STATEMENT EXECUTE FUNCTION tally_refuse('a credit note is final: issue another document to correct it');

CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
FOR EACH ROW EXECUTE FUNCTION tally_refuse('the ledger is append-only: post an adjustment');
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
FOR EACH STATEMENT EXECUTE FUNCTION tally_refuse('the ledger is append-only: post an adjustment');
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
FOR EACH ROW EXECUTE FUNCTION tally_refuse('the ledger is append-only: post an adjustment');
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
FOR EACH STATEMENT EXECUTE FUNCTION tally_refuse('the ledger is append-only: post an adjustment');
