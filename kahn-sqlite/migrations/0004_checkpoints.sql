-- KAHN schema, version 4: tenants' checkpoint logs (kahn_core::checkpoint) and the purge
-- records retention leaves for the next checkpoint to log.
--
-- Leaves and checkpoints are append-only by the adapter: inserted by a checkpoint, removed
-- only with their tenant, never updated. Nothing here is trusted by itself: an auditor checks
-- the envelopes with the server's key and that the leaves hash to their signed roots.

-- The leaf log: leaf `idx` (0, 1, 2, … per tenant, without gaps) as `Leaf::encode` bytes.
CREATE TABLE checkpoint_leaves (
    tenant_id  BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL CHECK (idx >= 0),
    leaf       BLOB    NOT NULL,
    PRIMARY KEY (tenant_id, idx)
) STRICT, WITHOUT ROWID;

-- The signed checkpoints, in the order they were appended (`position` 0, 1, 2, … per
-- tenant); two may cover the same tree_size.
CREATE TABLE checkpoints (
    tenant_id  BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL CHECK (position >= 0),
    tree_size  INTEGER NOT NULL CHECK (tree_size >= 0),
    envelope   TEXT    NOT NULL, -- the DSSE envelope as signed, JSON
    PRIMARY KEY (tenant_id, position)
) STRICT, WITHOUT ROWID;

-- What a retention purge recorded of each run it removed, in the purge's transaction: the
-- run as it was. `id` increases in the order records are made and is never reused.
-- logged_in is the tree_size of the checkpoint that logged the record; NULL until then.
CREATE TABLE purge_records (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id    BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    run_id       TEXT    NOT NULL,
    next_seq     INTEGER NOT NULL CHECK (next_seq >= 0),
    head_hash    BLOB    NOT NULL,
    received_at  INTEGER NOT NULL,
    purged_at    INTEGER NOT NULL, -- the store's clock at the purge
    logged_in    INTEGER
) STRICT;
-- A tenant's records not logged yet, by id (the next checkpoint's inputs); all of them
-- (deleting the tenant).
CREATE INDEX purge_records_by_tenant ON purge_records (tenant_id, logged_in, id);
