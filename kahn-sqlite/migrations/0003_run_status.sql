-- KAHN schema, version 3: a run's status, node counts and times by the rule of DESIGN.md
-- "Run status and durations", and one summary row per node, all maintained at append time by
-- kahn-core's `Progress` (so a read never scans a run's transitions).
--
-- runs.status becomes the derived status ('pending' for a run with nothing yet); run_state is
-- the `to` of the latest run-level transition, which decides the status when present. The
-- values of runs stored before this version are recomputed from their transitions, in Rust,
-- right after this script and in the same transaction (schema.rs).

ALTER TABLE runs ADD COLUMN run_state TEXT;
ALTER TABLE runs ADD COLUMN started_at INTEGER;
ALTER TABLE runs ADD COLUMN ended_at INTEGER;
ALTER TABLE runs ADD COLUMN nodes_failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN nodes_cancelled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN nodes_active INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN nodes_waiting INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN nodes_succeeded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN nodes_skipped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN nodes_other INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET status = 'pending' WHERE status IS NULL;

-- One row per node of a run: its latest state and times. Removed with its run.
CREATE TABLE run_nodes (
    tenant_id   BLOB    NOT NULL,
    run_id      TEXT    NOT NULL,
    node        TEXT    NOT NULL,
    state       TEXT    NOT NULL, -- `to` of its latest transition (its class is derived)
    started_at  INTEGER,          -- first active transition
    ended_at    INTEGER,          -- first terminal transition since it last became active
    attempts    INTEGER NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, run_id, node)
) STRICT, WITHOUT ROWID;
