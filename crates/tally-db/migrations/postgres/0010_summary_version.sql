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

CREATE FUNCTION tally_bump_summary_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE summary_version SET version = version + 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER account_ownership_bumps_summaries
AFTER INSERT OR UPDATE OR DELETE ON account_ownership
FOR EACH STATEMENT EXECUTE FUNCTION tally_bump_summary_version();
-- Every flush upserts the projects it saw; only a new project or one
-- moving to another domain changes whose it is. Row triggers: an upsert's
-- INSERT row trigger fires only for rows really inserted (a statement
-- trigger would fire on every flush).
CREATE TRIGGER keystone_project_added_bumps_summaries
AFTER INSERT OR DELETE ON keystone_projects
FOR EACH ROW EXECUTE FUNCTION tally_bump_summary_version();
CREATE TRIGGER keystone_project_moved_bumps_summaries
AFTER UPDATE ON keystone_projects
FOR EACH ROW WHEN (OLD.domain_id IS DISTINCT FROM NEW.domain_id)
EXECUTE FUNCTION tally_bump_summary_version();
