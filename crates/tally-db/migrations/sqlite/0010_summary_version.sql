-- A counter that moves whenever an answer of a cost or usage summary may
-- change: which rated cells count (every rating commit and cell rebuild
-- marks days dirty, and bumps it in the same transaction: tally-rate's
-- `levels::mark_in`), or who owns which project (the triggers below).
-- Servers remember summary answers under the counter's value they were
-- computed at (tally-show's `SummaryCache`), so a cached answer is never
-- served once the data behind it changed, whichever process changed it.
CREATE TABLE summary_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  BIGINT NOT NULL
);
INSERT INTO summary_version (id, version) VALUES (1, 0);

CREATE TRIGGER account_ownership_added_bumps_summaries AFTER INSERT ON account_ownership
BEGIN UPDATE summary_version SET version = version + 1; END;
CREATE TRIGGER account_ownership_removed_bumps_summaries AFTER DELETE ON account_ownership
BEGIN UPDATE summary_version SET version = version + 1; END;
CREATE TRIGGER account_ownership_changed_bumps_summaries AFTER UPDATE ON account_ownership
BEGIN UPDATE summary_version SET version = version + 1; END;
-- Every flush upserts the projects it saw; only a new project or a
-- project moving to another domain changes whose it is.
CREATE TRIGGER keystone_project_added_bumps_summaries AFTER INSERT ON keystone_projects
BEGIN UPDATE summary_version SET version = version + 1; END;
CREATE TRIGGER keystone_project_moved_bumps_summaries AFTER UPDATE OF domain_id ON keystone_projects
WHEN OLD.domain_id IS NOT NEW.domain_id
BEGIN UPDATE summary_version SET version = version + 1; END;
CREATE TRIGGER keystone_project_removed_bumps_summaries AFTER DELETE ON keystone_projects
BEGIN UPDATE summary_version SET version = version + 1; END;
