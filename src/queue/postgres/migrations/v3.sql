-- Version 3. `claim_epoch` numbers each claim of a job (a node's own counter; with the
-- lease owner it names one claim cluster-wide). Every start and finish carries the epoch of
-- the claim it belongs to, so a stale copy of a job (claimed again by the same node after
-- a rescue, or handed out again after a lapse of the node's lease) records nothing, and
-- so never runs. A constant default adds the column without rewriting the table.
ALTER TABLE jobd_jobs ADD COLUMN claim_epoch bigint NOT NULL DEFAULT 0;
-- Listings by the states few jobs are in at a time have an index (dead has one since
-- version 1); queued and succeeded jobs, most of the table, are found walking the primary
-- key from the newest. Listings by kind or by tenant alone walk it too, on the read lane
-- and within its statement timeout: an index on either took 10 us of PostgreSQL's CPU per
-- job (every write of a row adds an entry), a quarter of the end-to-end rate.
CREATE INDEX jobd_jobs_rare_states ON jobd_jobs (state, id) WHERE state IN ('running', 'failed', 'scheduled', 'cancelled');
