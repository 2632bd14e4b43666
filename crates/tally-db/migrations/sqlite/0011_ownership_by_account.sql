-- Which projects and domains an account owns, found by the account: every
-- account reader's summary scope (tally-show's `account_projects`) and the
-- accounts page's count ask this, and without it read every ownership row
-- once per account.
CREATE INDEX account_ownership_by_account ON account_ownership (account_id, kind);
