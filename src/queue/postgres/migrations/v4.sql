-- Version 4. `jobd_departed` lists the nodes that left or were declared lost, written in
-- the transaction that removes their row: every node's rescue sweeps the jobs of the
-- nodes listed here by owner, through their range of the leased index, for a while after
-- they went (a sweep skips rows locked at the time). The sweep of every leased job, which
-- walks an index that holds an entry for each job finished since the last vacuum (274 to
-- 850 ms a sweep over a half-hour soak at 35,000 jobs/s), is then needed only at a
-- node's start, for orphans from before this version.
CREATE TABLE jobd_departed (
    node uuid PRIMARY KEY,
    departed_at timestamptz NOT NULL
);
-- Every filter of the listing API has an index: by kind, and by tenant (empty unless
-- tokens are used: jobs submitted without one have an empty `submitted_by`). Without
-- them a listing by a kind or tenant that few jobs have walked the primary key from the
-- newest job, and on a large table ran into the read lane's statement timeout. The kind
-- index costs an entry for every version of every row (three per job).
CREATE INDEX jobd_jobs_kind ON jobd_jobs (kind, id);
CREATE INDEX jobd_jobs_tenant ON jobd_jobs (submitted_by, id) WHERE submitted_by <> '';
