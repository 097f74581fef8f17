-- What a Citus cluster needs of the schema besides policies without subqueries (0006), kept
-- identical on plain Postgres so both run one schema and one adapter (DESIGN.md "Scale-out").
-- `kahn migrate` distributes the tables afterwards when the citus extension is present
-- (kahn-pg/src/citus.rs); this migration changes no table's placement.
--
-- * kahn.enter_tenant(tenant): sets kahn.tenant for the rest of the transaction with SET LOCAL.
--   On Citus a distributed query runs on the workers, where the RLS policies of the shards read
--   kahn.tenant: set_config() does not reach them, a SET LOCAL does (citus.propagate_set_commands
--   = 'local', which the function also sets, transaction-local). On plain Postgres it is the
--   same as set_config(…, true). The tenant is a uuid parameter, quoted by format('%L').
-- * received_at is stamped, not checked: a BEFORE trigger sets it to the database's now()
--   whenever a writer supplies anything else. The refusing trigger of 0004 compared the value
--   with now(), and on Citus the coordinator evaluates the writer's now() while the shard's
--   trigger runs on a worker, in a transaction that started later: every append was refused.
--   The guarantee is the same: the app role can never set a receipt of its choosing.
-- * kahn.key_directory: the tenant of each API key by the key's hash. On Citus api_keys is
--   distributed by tenant_id, and a lookup by hash alone would ask every shard on every
--   request; the directory (a reference table there: a copy on every node) answers which
--   tenant, and the key's own row is then read on that tenant's shard only. Only the admin and
--   kahn_definer reach it; the app role has no privilege on it.

-- ---------------------------------------------------------------------------------------------
-- The tenant of a transaction
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION kahn.enter_tenant(p_tenant uuid) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Read by Citus when the next SET LOCAL runs; a placeholder without Citus.
    SET LOCAL citus.propagate_set_commands = 'local';
    EXECUTE pg_catalog.format('SET LOCAL kahn.tenant = %L', p_tenant::text);
END
$$;
REVOKE ALL ON FUNCTION kahn.enter_tenant(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kahn.enter_tenant(uuid) TO kahn_app;

-- ---------------------------------------------------------------------------------------------
-- received_at: stamped with the database's clock
-- ---------------------------------------------------------------------------------------------

-- Triggers on distributed tables are created only with this set (Citus); a placeholder
-- otherwise. The trigger only assigns NEW.received_at, which is safe on a shard.
SET LOCAL citus.enable_unsafe_triggers = on;
DROP TRIGGER received_at_is_now ON kahn.runs;
DROP FUNCTION kahn.refuse_forged_receipt();
CREATE FUNCTION kahn.stamp_receipt() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.received_at := pg_catalog.now();
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION kahn.stamp_receipt() FROM PUBLIC;
-- The WHEN clause keeps plain Postgres's append free of the call (the append writes now()).
CREATE TRIGGER received_at_is_now
    BEFORE INSERT OR UPDATE OF received_at ON kahn.runs
    FOR EACH ROW WHEN (NEW.received_at IS DISTINCT FROM pg_catalog.now())
    EXECUTE FUNCTION kahn.stamp_receipt();

-- ---------------------------------------------------------------------------------------------
-- The key directory
-- ---------------------------------------------------------------------------------------------

CREATE TABLE kahn.key_directory (
    -- SHA-256 of the key, as kahn.api_keys.key_hash. Not led by tenant_id: the lookup does not
    -- know the tenant yet, and nobody who could probe uniqueness (the admin, kahn_definer)
    -- is confined by RLS anyway; the app role has no privilege here.
    key_hash  bytea PRIMARY KEY CHECK (pg_catalog.length(key_hash) = 32),
    tenant_id uuid  NOT NULL REFERENCES kahn.tenants (id) ON DELETE CASCADE
);
INSERT INTO kahn.key_directory (key_hash, tenant_id)
    SELECT key_hash, tenant_id FROM kahn.api_keys
    ON CONFLICT (key_hash) DO NOTHING;

ALTER TABLE kahn.key_directory ENABLE ROW LEVEL SECURITY;
ALTER TABLE kahn.key_directory FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kahn.key_directory
    USING (tenant_id = kahn.current_tenant())
    WITH CHECK (tenant_id = kahn.current_tenant());
CREATE POLICY definer_all ON kahn.key_directory TO kahn_definer USING (true) WITH CHECK (true);
GRANT SELECT ON kahn.key_directory TO kahn_definer;

-- The tenant of an active key: the directory names the tenant, then the key's row is read with
-- its tenant (one shard on Citus). NULL when unknown, revoked or expired at the database's
-- clock. plpgsql, so the second query is planned with the tenant as a parameter. (Replaced in
-- place: owner and grants stay.)
CREATE OR REPLACE FUNCTION kahn.lookup_api_key(p_key_hash bytea) RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
DECLARE
    v_tenant uuid;
BEGIN
    SELECT d.tenant_id INTO v_tenant FROM kahn.key_directory AS d WHERE d.key_hash = p_key_hash;
    IF v_tenant IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN (
        SELECT k.tenant_id FROM kahn.api_keys AS k
        WHERE k.tenant_id = v_tenant AND k.key_hash = p_key_hash AND k.revoked_at IS NULL
          AND (k.expires_at IS NULL OR k.expires_at > pg_catalog.now())
        LIMIT 1
    );
END
$$;

-- Records that a key was used (at most about once a minute), on its tenant's shard.
CREATE OR REPLACE FUNCTION kahn.touch_api_key(p_key_hash bytea) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
DECLARE
    v_tenant uuid;
BEGIN
    SELECT d.tenant_id INTO v_tenant FROM kahn.key_directory AS d WHERE d.key_hash = p_key_hash;
    IF v_tenant IS NULL THEN
        RETURN;
    END IF;
    UPDATE kahn.api_keys AS k SET last_used_at = pg_catalog.now()
    WHERE k.tenant_id = v_tenant AND k.key_hash = p_key_hash AND k.revoked_at IS NULL
      AND (k.last_used_at IS NULL
           OR k.last_used_at < pg_catalog.now() - pg_catalog.make_interval(mins => 1));
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The app role's purge: which tenants have expired runs, as a join
-- ---------------------------------------------------------------------------------------------

-- Citus plans no correlated subquery over a reference table (the EXISTS of 0004 over
-- kahn.tenants); the join below is pushed down to every shard. Otherwise as 0004: each tenant
-- purged on its own, a failure reported and the others kept. (Replaced in place: owner and
-- grants stay.)
CREATE OR REPLACE FUNCTION kahn.purge_expired()
    RETURNS TABLE (tenant_id uuid, runs_removed bigint, transitions_removed bigint, failure text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
DECLARE
    v_tenant uuid;
    v_runs   bigint;
    v_rows   bigint;
BEGIN
    FOR v_tenant IN
        SELECT DISTINCT r.tenant_id FROM kahn.runs AS r
          JOIN kahn.tenants AS t ON t.id = r.tenant_id
         WHERE r.received_at < pg_catalog.now()
               - pg_catalog.make_interval(hours => 24 * t.retention_days)
         ORDER BY 1
    LOOP
        BEGIN
            SELECT p.runs_removed, p.transitions_removed INTO v_runs, v_rows
              FROM kahn.purge_tenant(v_tenant, pg_catalog.now(), false) AS p;
            IF v_runs > 0 THEN
                tenant_id := v_tenant;
                runs_removed := v_runs;
                transitions_removed := v_rows;
                failure := NULL;
                RETURN NEXT;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            tenant_id := v_tenant;
            runs_removed := 0;
            transitions_removed := 0;
            failure := SQLSTATE || ': ' || SQLERRM;
            RETURN NEXT;
        END;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Personal tenants and the admin's tenant list, in forms Citus runs
-- ---------------------------------------------------------------------------------------------

-- As 0004, but a concurrent or squatted insert is caught as a unique violation instead of
-- ON CONFLICT DO NOTHING: on Citus an INSERT … ON CONFLICT into a reference table locks the
-- table's shard in a mode reserved to roles that may UPDATE, DELETE or TRUNCATE it, and
-- kahn_definer may only insert tenants. Same outcome: one tenant per subject, NULL when the
-- name is someone else's. (Replaced in place: owner and grants stay.)
CREATE OR REPLACE FUNCTION kahn.provision_personal_tenant(p_sub text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    IF p_sub IS NULL OR p_sub = '' OR pg_catalog.octet_length('user:' || p_sub) > 256
       OR p_sub ~ '[[:space:][:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid subject for a personal tenant' USING ERRCODE = '22023';
    END IF;
    SELECT t.id INTO v_id FROM kahn.tenants AS t WHERE t.owner_sub = p_sub;
    IF FOUND THEN
        RETURN v_id;
    END IF;
    BEGIN
        INSERT INTO kahn.tenants AS t (id, name, owner_sub, retention_days, created_at)
        VALUES (pg_catalog.gen_random_uuid(), 'user:' || p_sub, p_sub, 90, pg_catalog.now());
    EXCEPTION WHEN unique_violation THEN
        NULL; -- created meanwhile for this subject, or the name is held by another owner
    END;
    SELECT t.id INTO v_id FROM kahn.tenants AS t WHERE t.owner_sub = p_sub;
    RETURN v_id;
END
$$;

-- As 0001, with the run counts joined instead of a correlated subquery per tenant (which
-- Citus does not plan over a reference table). (Replaced in place: owner and grants stay.)
CREATE OR REPLACE FUNCTION kahn.admin_list_tenants()
    RETURNS TABLE (id uuid, name text, owner_sub text, airlock_org_id text,
                   retention_days integer, created_at timestamptz, run_count bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
    SELECT t.id, t.name, t.owner_sub, t.airlock_org_id, t.retention_days, t.created_at,
           coalesce(c.runs, 0)
    FROM kahn.tenants AS t
    LEFT JOIN (SELECT r.tenant_id, pg_catalog.count(*) AS runs
                 FROM kahn.runs AS r GROUP BY r.tenant_id) AS c ON c.tenant_id = t.id
    ORDER BY t.name COLLATE "C"
$$;
