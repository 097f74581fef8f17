-- Tenant checkpoints (issue 19; kahn-core/src/checkpoint.rs): what a store keeps so that signed
-- checkpoints can prove nothing acknowledged was removed or rewritten except by retention.
--
-- * kahn.checkpoint_leaves: each tenant's leaf log, one row per leaf, `leaf` being
--   Leaf::encode()'s bytes (the Merkle leaf data, exactly what is hashed). Append-only by grant,
--   like the transitions: the app role holds SELECT and INSERT, never UPDATE, DELETE or
--   TRUNCATE, so it can neither rewrite nor wipe a log. No foreign key (as 0002 for the
--   transitions: one referential check per row); the checkpoint row inserted in the same
--   transaction carries the tenant's.
-- * kahn.checkpoints: each tenant's signed checkpoints, in the order appended (`seq`), with the
--   size each covers and its DSSE envelope as JSON text (never jsonb: reading back gives the
--   envelope as signed). Append-only by grant too. Its foreign key to kahn.tenants makes an
--   append for a tenant that does not exist (or is being deleted) fail.
-- * kahn.purge_records: what the retention purge recorded of each run it removed (its
--   next_seq, head_hash and received_at, and when), kept until a checkpoint logs it as a
--   `Purged` leaf and marks it `logged`. Inserted only by kahn.purge_tenant (SECURITY DEFINER),
--   in the same transaction as the run's deletion, so a snapshot never holds one without the
--   other; the app role reads them and may update `logged` only. Ids come from one sequence
--   (kahn.purge_record_ids), so they increase in the order records are made.
--
-- All three are tenant data like the rest (DESIGN.md "Postgres adapter", "Scale-out"):
-- tenant_id leads the key, RLS enabled and forced, the two policies of every tenant table
-- (the isolation predicate without a subquery), distributed by tenant_id on Citus and
-- co-located with kahn.runs (kahn-pg/src/citus.rs). The operator's tenant deletion removes
-- them with the tenant (kahn-pg/src/control.rs).

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------

CREATE TABLE kahn.checkpoint_leaves (
    tenant_id uuid   NOT NULL,
    idx       bigint NOT NULL CHECK (idx >= 0),
    -- 51 fixed bytes and a run id of 1 to 200 bytes (kahn-core's leaf encoding).
    leaf      bytea  NOT NULL CHECK (pg_catalog.octet_length(leaf) BETWEEN 52 AND 251),
    CONSTRAINT checkpoint_leaves_pkey PRIMARY KEY (tenant_id, idx)
);

CREATE TABLE kahn.checkpoints (
    tenant_id uuid   NOT NULL REFERENCES kahn.tenants (id) ON DELETE CASCADE,
    seq       bigint NOT NULL CHECK (seq >= 0),       -- 0, 1, 2… per tenant, in append order
    tree_size bigint NOT NULL CHECK (tree_size >= 0),
    envelope  text   NOT NULL,                        -- the DSSE envelope, JSON
    CONSTRAINT checkpoints_pkey PRIMARY KEY (tenant_id, seq)
);

CREATE SEQUENCE kahn.purge_record_ids AS bigint MINVALUE 1;

CREATE TABLE kahn.purge_records (
    tenant_id   uuid        NOT NULL,
    id          bigint      NOT NULL CHECK (id >= 1),
    run_id      text        COLLATE "C" NOT NULL
                            CHECK (pg_catalog.octet_length(run_id) BETWEEN 1 AND 200),
    next_seq    bigint      NOT NULL CHECK (next_seq >= 0),
    head_hash   bytea       NOT NULL CHECK (pg_catalog.octet_length(head_hash) = 32),
    received_at timestamptz NOT NULL,
    purged_at   timestamptz NOT NULL,
    logged      boolean     NOT NULL DEFAULT false,
    CONSTRAINT purge_records_pkey PRIMARY KEY (tenant_id, id)
);
-- The next checkpoint's probe: the tenant's records not logged yet, by id.
CREATE INDEX purge_records_unlogged ON kahn.purge_records (tenant_id, id) WHERE NOT logged;

-- ---------------------------------------------------------------------------------------------
-- Row-Level Security: enabled and forced, KAHN's two policies.
-- ---------------------------------------------------------------------------------------------

ALTER TABLE kahn.checkpoint_leaves ENABLE ROW LEVEL SECURITY;
ALTER TABLE kahn.checkpoint_leaves FORCE ROW LEVEL SECURITY;
ALTER TABLE kahn.checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE kahn.checkpoints FORCE ROW LEVEL SECURITY;
ALTER TABLE kahn.purge_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE kahn.purge_records FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON kahn.checkpoint_leaves
    USING (tenant_id = kahn.current_tenant())
    WITH CHECK (tenant_id = kahn.current_tenant());
CREATE POLICY tenant_isolation ON kahn.checkpoints
    USING (tenant_id = kahn.current_tenant())
    WITH CHECK (tenant_id = kahn.current_tenant());
CREATE POLICY tenant_isolation ON kahn.purge_records
    USING (tenant_id = kahn.current_tenant())
    WITH CHECK (tenant_id = kahn.current_tenant());

CREATE POLICY definer_all ON kahn.checkpoint_leaves TO kahn_definer USING (true) WITH CHECK (true);
CREATE POLICY definer_all ON kahn.checkpoints TO kahn_definer USING (true) WITH CHECK (true);
CREATE POLICY definer_all ON kahn.purge_records TO kahn_definer USING (true) WITH CHECK (true);

-- ---------------------------------------------------------------------------------------------
-- Grants
-- ---------------------------------------------------------------------------------------------

REVOKE ALL ON kahn.checkpoint_leaves, kahn.checkpoints, kahn.purge_records FROM PUBLIC;
REVOKE ALL ON SEQUENCE kahn.purge_record_ids FROM PUBLIC;

-- The app role: the checkpoint log is append-only by grant; purge records are read, and marked
-- logged by the checkpoint that logs them (that column only).
GRANT SELECT, INSERT ON kahn.checkpoint_leaves, kahn.checkpoints TO kahn_app;
GRANT SELECT ON kahn.purge_records TO kahn_app;
GRANT UPDATE (logged) ON kahn.purge_records TO kahn_app;

-- The definer role: what the purge needs to record what it removes.
GRANT INSERT ON kahn.purge_records TO kahn_definer;
GRANT USAGE ON SEQUENCE kahn.purge_record_ids TO kahn_definer;

-- ---------------------------------------------------------------------------------------------
-- The purge records what it removes
-- ---------------------------------------------------------------------------------------------

-- As 0005, and before deleting the expired runs it inserts one purge record per run, with the
-- run's next_seq, head_hash and received_at as locked (so as the deletion removes them), and
-- purged_at the database's now() (also for an operator's purge "as of" another instant: it is
-- when the purge happened). In the same transaction as the deletion: a purged run and its
-- record are never seen one without the other. A dry run records nothing. Ids are drawn in run
-- id order.
--
-- The records are inserted by joining the locked runs (on their tenant's shard on Citus): an
-- INSERT … SELECT reading no distributed table would go through the coordinator as a COPY,
-- which Postgres refuses into a table under RLS. (Replaced in place: owner, grants and the app
-- role's kahn.purge_expired() stay.)
CREATE OR REPLACE FUNCTION kahn.purge_tenant(p_tenant uuid, p_now timestamptz, p_dry_run boolean)
    RETURNS TABLE (runs_removed bigint, transitions_removed bigint)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_cutoff timestamptz;
    v_runs   text[];
    v_ids    bigint[];
    v_runs_n bigint;
    v_rows_n bigint;
    v_now    timestamptz := pg_catalog.now();
BEGIN
    SELECT coalesce(p_now, pg_catalog.now())
           - pg_catalog.make_interval(hours => 24 * t.retention_days)
      INTO v_cutoff
      FROM kahn.tenants AS t WHERE t.id = p_tenant;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint;
        RETURN;
    END IF;
    IF p_dry_run THEN
        SELECT coalesce(pg_catalog.array_agg(r.run_id), '{}') INTO v_runs
          FROM kahn.runs AS r
         WHERE r.tenant_id = p_tenant AND r.received_at < v_cutoff;
    ELSE
        SELECT coalesce(pg_catalog.array_agg(e.run_id ORDER BY e.run_id), '{}') INTO v_runs
          FROM (SELECT r.run_id FROM kahn.runs AS r
                 WHERE r.tenant_id = p_tenant AND r.received_at < v_cutoff
                   FOR UPDATE OF r) AS e;
    END IF;
    v_runs_n := pg_catalog.cardinality(v_runs);
    IF v_runs_n = 0 THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint;
        RETURN;
    END IF;
    IF p_dry_run THEN
        SELECT pg_catalog.count(*) INTO v_rows_n FROM kahn.transitions AS x
         WHERE x.tenant_id = p_tenant AND x.run_id = ANY (v_runs);
    ELSE
        v_ids := ARRAY(SELECT pg_catalog.nextval('kahn.purge_record_ids')
                         FROM pg_catalog.generate_series(1, v_runs_n));
        INSERT INTO kahn.purge_records
               (tenant_id, id, run_id, next_seq, head_hash, received_at, purged_at)
        SELECT r.tenant_id, g.id, r.run_id, r.next_seq, r.head_hash, r.received_at, v_now
          FROM unnest(v_ids, v_runs) AS g(id, run_id) -- the FROM-clause form: no schema
          JOIN kahn.runs AS r ON r.tenant_id = p_tenant AND r.run_id = g.run_id;
        DELETE FROM kahn.transitions AS x
         WHERE x.tenant_id = p_tenant AND x.run_id = ANY (v_runs);
        GET DIAGNOSTICS v_rows_n = ROW_COUNT;
        DELETE FROM kahn.run_nodes AS x
         WHERE x.tenant_id = p_tenant AND x.run_id = ANY (v_runs);
        DELETE FROM kahn.runs AS r
         WHERE r.tenant_id = p_tenant AND r.run_id = ANY (v_runs);
    END IF;
    RETURN QUERY SELECT v_runs_n, v_rows_n;
END
$$;
