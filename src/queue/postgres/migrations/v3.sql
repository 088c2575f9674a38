-- Version 3. `claim_epoch` numbers each claim of a job (a node's own counter; with the
-- lease owner it names one claim cluster-wide). Every start and finish carries the epoch of
-- the claim it belongs to, so a stale copy of a job (claimed again by the same node after
-- a rescue, or handed out again after a lapse of the node's lease) records nothing, and
-- so never runs. A constant default adds the column without rewriting the table.
ALTER TABLE jobd_jobs ADD COLUMN claim_epoch bigint NOT NULL DEFAULT 0;
-- Listings by the states few jobs are in at a time have an index (dead has one since
-- version 1); queued and succeeded jobs, most of the table, are found walking the primary
-- key from the newest. Listings by kind or by tenant alone walk it too, on the read lane
-- and within its statement timeout: with an index by kind (and one by tenant, empty
-- without tokens), one node ran 54,000 noop jobs/s at 20.9 us of PostgreSQL's CPU per
-- job, against 72,800 at 15.0 us without (every write of a row adds an entry to each).
CREATE INDEX jobd_jobs_rare_states ON jobd_jobs (state, id) WHERE state IN ('running', 'failed', 'scheduled', 'cancelled');
