-- KAHN schema, version 1. The same logical schema as kahn-pg: tenant_id leads every key.
-- Ids are 16-byte UUID blobs, hashes 32-byte SHA-256 blobs, times microseconds since the epoch.

CREATE TABLE tenants (
    id              BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    name            TEXT    NOT NULL UNIQUE,
    owner_sub       TEXT    UNIQUE,
    airlock_org_id  TEXT    UNIQUE,
    retention_days  INTEGER NOT NULL DEFAULT 90 CHECK (retention_days > 0),
    created_at      INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    tenant_id   BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_id      BLOB    NOT NULL CHECK (length(key_id) = 16),
    key_hash    BLOB    NOT NULL CHECK (length(key_hash) = 32),
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    PRIMARY KEY (tenant_id, key_id)
) STRICT;
CREATE UNIQUE INDEX api_keys_by_hash ON api_keys (key_hash);

CREATE TABLE runs (
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
    activity_at  INTEGER NOT NULL, -- coalesce(last_ts, created_at): listing order, retention
    PRIMARY KEY (tenant_id, run_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX runs_by_activity ON runs (tenant_id, activity_at DESC, run_id);

-- Append-only by the adapter: rows are inserted and, with their run, purged; never updated.
CREATE TABLE transitions (
    tenant_id     BLOB    NOT NULL,
    run_id        TEXT    NOT NULL,
    seq           INTEGER NOT NULL CHECK (seq >= 0),
    body          TEXT    NOT NULL, -- RFC 8785 canonical JSON
    content_hash  BLOB    NOT NULL,
    chain_hash    BLOB    NOT NULL,
    PRIMARY KEY (tenant_id, run_id, seq)
) STRICT, WITHOUT ROWID;
