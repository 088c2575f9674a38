-- Version 5. Each job names its queue and has a priority; jobs from before run in the
-- default queue at the default priority. Constant defaults add the columns without
-- rewriting the table. `ready_seq` is banded by priority (`(9 - priority) * 2^48` plus the
-- sequence, `crate::queue::columns::PRIORITY_BAND`), so that claims in `ready_seq` order take
-- every job of a higher priority first: the jobs that will be claimed again move to the
-- default priority's band, in their order. `jobd_queue_states` holds what an operator said
-- of a queue (paused or resumed, and when): claims skip the jobs of a paused queue on every
-- node, and it outlives restarts. A queue without a row runs, unless the configuration
-- starts it paused.
ALTER TABLE jobd_jobs ADD COLUMN queue text NOT NULL DEFAULT 'default';
ALTER TABLE jobd_jobs ADD COLUMN priority smallint NOT NULL DEFAULT 5;
UPDATE jobd_jobs SET ready_seq = ready_seq + 4 * 281474976710656::bigint
    WHERE ready_seq IS NOT NULL AND state IN ('queued', 'running');
CREATE TABLE jobd_queue_states (
    name text PRIMARY KEY,
    paused boolean NOT NULL,
    changed_at timestamptz NOT NULL
);
