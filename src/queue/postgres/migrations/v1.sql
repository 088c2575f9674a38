-- Version 1. `seq` orders listings; `ready_seq` (from a sequence) orders claims and is
-- renewed when a delayed job falls due, as in SQLite. `lease_owner` is the node that
-- claimed a job: it stays `queued` in that node's window until its start is recorded,
-- then `running`. The partial indexes keep the claim, the promotion of due jobs, the
-- rescue and the purge off the finished rows that make up most of the table.
CREATE SEQUENCE jobd_ready_seq;
CREATE TABLE jobd_jobs (
    seq bigserial PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    kind text NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    timeout_ms bigint,
    created_at bigint NOT NULL,
    run_at bigint,
    started_at bigint,
    finished_at bigint,
    last_error text,
    result text,
    idempotency_key text,
    submitted_by text NOT NULL DEFAULT '',
    args text,
    body bytea,
    body_is_json boolean NOT NULL DEFAULT false,
    ready_seq bigint,
    lease_owner uuid
);
CREATE UNIQUE INDEX jobd_jobs_idempotency ON jobd_jobs (submitted_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobd_jobs_ready ON jobd_jobs (ready_seq) WHERE state = 'queued' AND lease_owner IS NULL;
CREATE INDEX jobd_jobs_waiting ON jobd_jobs (run_at) WHERE state IN ('scheduled', 'failed');
CREATE INDEX jobd_jobs_leased ON jobd_jobs (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX jobd_jobs_done ON jobd_jobs (finished_at) WHERE state IN ('succeeded', 'dead', 'cancelled');
CREATE INDEX jobd_jobs_dead ON jobd_jobs (seq) WHERE state = 'dead';
CREATE TABLE jobd_nodes (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE jobd_counts (
    node uuid NOT NULL,
    state text NOT NULL,
    jobs bigint NOT NULL,
    PRIMARY KEY (node, state)
);
