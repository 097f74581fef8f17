-- KAHN schema, version 2: retention counts from receipt; API keys may expire and record
-- their last use.
--
-- runs.received_at is the store's clock (microseconds since the epoch) at the last append
-- that stored something for the run; a purge removes the runs whose received_at plus the
-- tenant's retention has passed. Runs stored before this version get the migration's time:
-- a change of rule never purges data that was kept under the old one.
--
-- SQLite adds a NOT NULL column only with a constant default, and a default here would be a
-- trap (a row written without received_at would expire at once), so runs is rebuilt. No
-- other table references it.

CREATE TABLE runs_v2 (
    tenant_id    BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    run_id       TEXT    NOT NULL,
    source       TEXT,
    graph        TEXT,             -- RFC 8785 canonical JSON
    labels       TEXT    NOT NULL DEFAULT '{}',
    next_seq     INTEGER NOT NULL DEFAULT 0,
    head_hash    BLOB    NOT NULL,
    status       TEXT,
    first_ts     INTEGER,
    last_ts      INTEGER,
    created_at   INTEGER NOT NULL,
    activity_at  INTEGER NOT NULL, -- coalesce(last_ts, created_at): listing order
    received_at  INTEGER NOT NULL, -- store clock at the last append that stored something: retention
    PRIMARY KEY (tenant_id, run_id)
) STRICT, WITHOUT ROWID;

INSERT INTO runs_v2 (tenant_id, run_id, source, graph, labels, next_seq, head_hash, status,
                     first_ts, last_ts, created_at, activity_at, received_at)
SELECT tenant_id, run_id, source, graph, labels, next_seq, head_hash, status,
       first_ts, last_ts, created_at, activity_at,
       CAST(unixepoch('subsec') * 1000000 AS INTEGER)
FROM runs;

DROP TABLE runs;
ALTER TABLE runs_v2 RENAME TO runs;
CREATE INDEX runs_by_activity ON runs (tenant_id, activity_at DESC, run_id);
-- The purge: one tenant's runs received before a cutoff.
CREATE INDEX runs_by_receipt ON runs (tenant_id, received_at);

ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;   -- stops resolving then; NULL: never
ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER; -- recorded at most once a minute per key
