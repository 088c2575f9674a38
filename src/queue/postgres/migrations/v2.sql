-- Version 2. The job id is the primary key and `seq` is gone: every write of a job (its
-- insert, its lease, its end) paid for one more index entry, about a sixth of
-- PostgreSQL's time per job. Listings order by id, which is a UUIDv7 and so ordered by
-- creation time. Count rows gain a lane, so that a node's ingest connection and its
-- dispatch connection never wait for each other's count rows.
ALTER TABLE jobd_jobs DROP CONSTRAINT jobd_jobs_pkey, DROP CONSTRAINT jobd_jobs_id_key, ADD PRIMARY KEY (id);
DROP INDEX jobd_jobs_dead;
ALTER TABLE jobd_jobs DROP COLUMN seq;
CREATE INDEX jobd_jobs_dead ON jobd_jobs (id) WHERE state = 'dead';
ALTER TABLE jobd_counts ADD COLUMN lane smallint NOT NULL DEFAULT 0;
ALTER TABLE jobd_counts DROP CONSTRAINT jobd_counts_pkey, ADD PRIMARY KEY (node, lane, state);
