-- Run status and durations (DESIGN.md "Run status and durations"): a run's status, node counts
-- and times by the new rule, and one summary row per node, all maintained at append time from
-- kahn-core's `Progress`, so a read never scans a run's transitions.
--
-- * kahn.runs.status_json is now the derived status (a JSON string literal, like every state:
--   Postgres text cannot hold the \u0000 a state may carry), '"pending"' for a run with nothing
--   yet. run_state_json is the `to` of the latest run-level transition (it decides the status
--   when present). started_at, ended_at and nodes_<class> as DESIGN.md defines them.
-- * Runs stored before this migration are marked for recomputation by a NULL status_json:
--   `kahn migrate` (PgBackend::migrate) recomputes them right after, from their transitions,
--   with kahn-core's rule, and a run created by an append never has one.
-- * kahn.run_nodes: one row per node of a run, tenant data like the rest: RLS enabled and
--   forced, the tenant predicate without a subquery (DESIGN.md "Scale-out"), tenant_id leading
--   the key. The app role inserts rows and updates what an append changes; the purge and the
--   operator's tenant deletion remove them with their run.

ALTER TABLE kahn.runs ADD COLUMN run_state_json text;
ALTER TABLE kahn.runs ADD COLUMN started_at timestamptz;
ALTER TABLE kahn.runs ADD COLUMN ended_at timestamptz;
ALTER TABLE kahn.runs ADD COLUMN nodes_failed bigint NOT NULL DEFAULT 0;
ALTER TABLE kahn.runs ADD COLUMN nodes_cancelled bigint NOT NULL DEFAULT 0;
ALTER TABLE kahn.runs ADD COLUMN nodes_active bigint NOT NULL DEFAULT 0;
ALTER TABLE kahn.runs ADD COLUMN nodes_waiting bigint NOT NULL DEFAULT 0;
ALTER TABLE kahn.runs ADD COLUMN nodes_succeeded bigint NOT NULL DEFAULT 0;
ALTER TABLE kahn.runs ADD COLUMN nodes_skipped bigint NOT NULL DEFAULT 0;
ALTER TABLE kahn.runs ADD COLUMN nodes_other bigint NOT NULL DEFAULT 0;
-- Marks every stored run for recomputation (the old value was the last `to`).
UPDATE kahn.runs SET status_json = NULL;
ALTER TABLE kahn.runs ALTER COLUMN status_json SET DEFAULT '"pending"';

CREATE TABLE kahn.run_nodes (
    tenant_id   uuid        NOT NULL,
    run_id      text        COLLATE "C" NOT NULL,
    node_json   text        COLLATE "C" NOT NULL, -- the node, as a JSON string literal
    state_json  text        NOT NULL,             -- its latest `to`, as a JSON string literal
    started_at  timestamptz,                      -- first active transition
    ended_at    timestamptz,                      -- first terminal one since it last became active
    attempts    bigint      NOT NULL CHECK (attempts >= 0),
    first_seq   bigint      NOT NULL CHECK (first_seq >= 0),
    last_seq    bigint      NOT NULL CHECK (last_seq >= 0),
    CONSTRAINT run_nodes_pkey PRIMARY KEY (tenant_id, run_id, node_json)
);

ALTER TABLE kahn.run_nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE kahn.run_nodes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kahn.run_nodes
    USING (tenant_id = kahn.current_tenant())
    WITH CHECK (tenant_id = kahn.current_tenant());
CREATE POLICY definer_all ON kahn.run_nodes TO kahn_definer USING (true) WITH CHECK (true);

REVOKE ALL ON kahn.run_nodes FROM PUBLIC;
GRANT SELECT, INSERT ON kahn.run_nodes TO kahn_app;
GRANT UPDATE (state_json, started_at, ended_at, attempts, last_seq) ON kahn.run_nodes TO kahn_app;
GRANT UPDATE (run_state_json, started_at, ended_at, nodes_failed, nodes_cancelled, nodes_active,
              nodes_waiting, nodes_succeeded, nodes_skipped, nodes_other)
    ON kahn.runs TO kahn_app;
GRANT SELECT, DELETE ON kahn.run_nodes TO kahn_definer;

-- The operator's purge of one tenant now removes the expired runs' node summaries too
-- (replaced in place: owner, grants and the app role's kahn.purge_expired() stay).
CREATE OR REPLACE FUNCTION kahn.purge_tenant(p_tenant uuid, p_now timestamptz, p_dry_run boolean)
    RETURNS TABLE (runs_removed bigint, transitions_removed bigint)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_cutoff timestamptz;
    v_runs   text[];
    v_runs_n bigint;
    v_rows_n bigint;
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
        SELECT coalesce(pg_catalog.array_agg(e.run_id), '{}') INTO v_runs
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
