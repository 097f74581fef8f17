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
