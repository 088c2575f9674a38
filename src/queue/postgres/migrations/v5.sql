-- Version 5. Each job names its queue; jobs from before queues run in the default one. A
-- constant default adds the column without rewriting the table. `jobd_queue_states` holds
-- what an operator said of a queue (paused or resumed, and when): claims skip the jobs of
-- a paused queue on every node, and it outlives restarts. A queue without a row runs,
-- unless the configuration starts it paused.
ALTER TABLE jobd_jobs ADD COLUMN queue text NOT NULL DEFAULT 'default';
CREATE TABLE jobd_queue_states (
    name text PRIMARY KEY,
    paused boolean NOT NULL,
    changed_at timestamptz NOT NULL
);
