-- Version 3. `claim_epoch` numbers each claim of a job (a node's own counter; with the
-- lease owner it names one claim cluster-wide). Every start and finish carries the epoch of
-- the claim it belongs to, so a stale copy of a job (claimed again by the same node after
-- a rescue, or handed out again after a lapse of the node's lease) records nothing, and
-- so never runs. A constant default adds the column without rewriting the table.
ALTER TABLE jobd_jobs ADD COLUMN claim_epoch bigint NOT NULL DEFAULT 0;
-- Every filter of the listing API has an index, so that no client's listing walks the
-- table: by kind; by tenant (only rows with one, so a daemon without tokens keeps none);
-- by the states few jobs are in at a time (dead has one since version 1). Queued and
-- succeeded jobs, most of the table, are found walking the primary key from the newest.
CREATE INDEX jobd_jobs_kind ON jobd_jobs (kind, id);
CREATE INDEX jobd_jobs_tenant ON jobd_jobs (submitted_by, id) WHERE submitted_by <> '';
CREATE INDEX jobd_jobs_rare_states ON jobd_jobs (state, id) WHERE state IN ('running', 'failed', 'scheduled', 'cancelled');
