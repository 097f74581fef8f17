-- The retention purge runs on the database's own clock.
--
-- kahn.purge_expired(p_now) trusted its caller's time: the app role could call
-- `SELECT * FROM kahn.purge_expired('infinity')` and delete every tenant's log (found by the
-- red team, round two; docs/RELIABILITY.md). Now:
-- * kahn.purge_expired() takes no time: it purges at pg_catalog.now(), so the app role can
--   never delete more than retention allows now. It is the only purge the app role may run.
-- * kahn.purge_expired_at(p_now) is the same purge at a time of the caller's choosing, for
--   the operator (the admin DSN: owners and members of kahn_definer) and tests; EXECUTE is
--   revoked from PUBLIC and granted to nobody, so kahn_app cannot call it.

DROP FUNCTION kahn.purge_expired(timestamptz);

-- Removes every run whose last activity is older than its tenant's retention at p_now, with
-- its transitions; reports per tenant that lost anything. The expired runs are locked first
-- (waiting for an append in flight, then re-checked against its outcome); the deletes then
-- run as new statements, so they see every transition committed before the lock.
CREATE FUNCTION kahn.purge_expired_at(p_now timestamptz)
    RETURNS TABLE (tenant_id uuid, runs_removed bigint, transitions_removed bigint)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
DECLARE
    v_tenants uuid[];
    v_runs    text[];
BEGIN
    SELECT coalesce(array_agg(e.tenant_id), '{}'), coalesce(array_agg(e.run_id), '{}')
      INTO v_tenants, v_runs
      FROM (SELECT r.tenant_id, r.run_id
              FROM kahn.runs AS r JOIN kahn.tenants AS t ON t.id = r.tenant_id
             WHERE r.activity_at + make_interval(days => t.retention_days) < p_now
               FOR UPDATE OF r) AS e;
    RETURN QUERY
    WITH expired AS (
        SELECT * FROM unnest(v_tenants, v_runs) AS e(tenant_id, run_id)
    ), gone_transitions AS (
        DELETE FROM kahn.transitions AS x USING expired AS e
        WHERE x.tenant_id = e.tenant_id AND x.run_id = e.run_id
        RETURNING x.tenant_id
    ), per_tenant_transitions AS (
        SELECT g.tenant_id, count(*) AS n FROM gone_transitions AS g GROUP BY g.tenant_id
    ), per_tenant_runs AS (
        SELECT e.tenant_id, count(*) AS n FROM expired AS e GROUP BY e.tenant_id
    )
    SELECT pr.tenant_id, pr.n, coalesce(pt.n, 0)
      FROM per_tenant_runs AS pr LEFT JOIN per_tenant_transitions AS pt USING (tenant_id)
     ORDER BY pr.tenant_id;
    DELETE FROM kahn.runs AS r
     USING unnest(v_tenants, v_runs) AS e(tenant_id, run_id)
     WHERE r.tenant_id = e.tenant_id AND r.run_id = e.run_id;
END
$$;

-- The app role's purge: the database's clock, no argument to forge.
CREATE FUNCTION kahn.purge_expired()
    RETURNS TABLE (tenant_id uuid, runs_removed bigint, transitions_removed bigint)
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$ SELECT p.tenant_id, p.runs_removed, p.transitions_removed
      FROM kahn.purge_expired_at(pg_catalog.now()) AS p $$;

GRANT CREATE ON SCHEMA kahn TO kahn_definer;
ALTER FUNCTION kahn.purge_expired_at(timestamptz) OWNER TO kahn_definer;
ALTER FUNCTION kahn.purge_expired() OWNER TO kahn_definer;
REVOKE CREATE ON SCHEMA kahn FROM kahn_definer;

REVOKE ALL ON FUNCTION kahn.purge_expired_at(timestamptz), kahn.purge_expired() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kahn.purge_expired() TO kahn_app;
