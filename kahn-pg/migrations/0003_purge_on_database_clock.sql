-- The retention purge runs on the database's own clock.
--
-- kahn.purge_expired(p_now) trusted its caller's time: the app role could call
-- `SELECT * FROM kahn.purge_expired('infinity')` and delete every tenant's log (found by the
-- red team, round two; docs/RELIABILITY.md). Now:
-- * kahn.purge_expired() takes no time: it purges at pg_catalog.now(), so the app role can
--   never delete more than retention allows now. It is the only purge the app role may run.
-- * kahn.purge_expired_at(p_now) is the same purge at a time of the caller's choosing (the
--   function 0001 created, renamed, its body unchanged), for the operator (the admin DSN:
--   owners and members of kahn_definer) and tests; EXECUTE is granted to nobody, so kahn_app
--   cannot call it.

ALTER FUNCTION kahn.purge_expired(timestamptz) RENAME TO purge_expired_at;
REVOKE ALL ON FUNCTION kahn.purge_expired_at(timestamptz) FROM PUBLIC, kahn_app;

-- The app role's purge: the database's clock, no argument to forge.
CREATE FUNCTION kahn.purge_expired()
    RETURNS TABLE (tenant_id uuid, runs_removed bigint, transitions_removed bigint)
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$ SELECT p.tenant_id, p.runs_removed, p.transitions_removed
      FROM kahn.purge_expired_at(pg_catalog.now()) AS p $$;

GRANT CREATE ON SCHEMA kahn TO kahn_definer;
ALTER FUNCTION kahn.purge_expired() OWNER TO kahn_definer;
REVOKE CREATE ON SCHEMA kahn FROM kahn_definer;

REVOKE ALL ON FUNCTION kahn.purge_expired() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kahn.purge_expired() TO kahn_app;
