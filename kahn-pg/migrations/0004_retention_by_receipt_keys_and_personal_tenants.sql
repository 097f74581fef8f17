-- Retention counted from receipt, key expiry and last use, personal tenants on first sign-in.
--
-- * kahn.runs.received_at: the database's clock at the last append that stored something for
--   the run. Retention counts from it, never from the producer's ts: a backfill is kept the full
--   retention, a run dated 2099 expires like any other. Runs stored before this migration get
--   the migration's time (ADD COLUMN with a non-volatile default stores that one value for every
--   existing row without rewriting the table): nothing is purged because of the change.
-- * received_at is only ever set to the database's now() (a trigger refuses anything else).
-- * kahn.api_keys.expires_at (a key stops resolving then) and last_used_at (recorded at most
--   about once a minute, off the request path, through kahn.touch_api_key).
-- * kahn.provision_personal_tenant(sub): the personal tenant `user:<sub>` of a JWT subject,
--   created once, for the app role, which may not insert tenants itself.
-- * The purge: kahn.purge_tenant(tenant, at, dry_run) purges one tenant (the operator's, EXECUTE
--   granted to nobody); kahn.purge_expired() purges every tenant at the database's now() (the
--   app role's), each tenant independently. kahn.purge_expired_at(ts) is gone.
--
-- Retention is added as hours (24 per day), never as days: a day interval follows the
-- session's time zone across DST changes, and retention is a fixed duration.

-- ---------------------------------------------------------------------------------------------
-- Columns and index
-- ---------------------------------------------------------------------------------------------

-- The default stays: any row inserted without it (the append sets it explicitly) gets the
-- database's clock, which is what received_at is.
ALTER TABLE kahn.runs ADD COLUMN received_at timestamptz NOT NULL DEFAULT pg_catalog.now();
-- The purge's probe: per tenant, the runs received before its cutoff.
CREATE INDEX runs_by_receipt ON kahn.runs (tenant_id, received_at);

-- received_at can only ever be set to the database's now(). The app role may update it (the
-- append renews it), and it picks its tenant itself, so without this a compromised server
-- could set every tenant's runs to 1970 and have kahn.purge_expired() delete them all: the hole
-- 0003 closed, reopened. With it, the app role can only make runs live longer. The WHEN clause
-- keeps the append's path free of function calls; the function only raises. (The owner can
-- still disable the trigger; the app role owns nothing.)
CREATE FUNCTION kahn.refuse_forged_receipt() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'kahn.runs.received_at may only be set to the database''s now()'
        USING ERRCODE = '42501';
END
$$;
REVOKE ALL ON FUNCTION kahn.refuse_forged_receipt() FROM PUBLIC;
CREATE TRIGGER received_at_is_now
    BEFORE INSERT OR UPDATE OF received_at ON kahn.runs
    FOR EACH ROW WHEN (NEW.received_at IS DISTINCT FROM pg_catalog.now())
    EXECUTE FUNCTION kahn.refuse_forged_receipt();

ALTER TABLE kahn.api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE kahn.api_keys ADD COLUMN last_used_at timestamptz;

-- ---------------------------------------------------------------------------------------------
-- Grants
-- ---------------------------------------------------------------------------------------------

-- The append renews received_at.
GRANT UPDATE (received_at) ON kahn.runs TO kahn_app;
-- What the new functions need: record a key's use, create a personal tenant.
GRANT UPDATE (last_used_at) ON kahn.api_keys TO kahn_definer;
GRANT INSERT ON kahn.tenants TO kahn_definer;

-- ---------------------------------------------------------------------------------------------
-- Functions
-- ---------------------------------------------------------------------------------------------

-- The tenant of an active API key, by the key's SHA-256; NULL when unknown, revoked or expired
-- at the database's clock. (Replaced in place: owner and grants stay.)
CREATE OR REPLACE FUNCTION kahn.lookup_api_key(p_key_hash bytea) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
    SELECT k.tenant_id FROM kahn.api_keys AS k
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > pg_catalog.now())
    LIMIT 1
$$;

-- Records that a key was used: sets last_used_at to now() only when it is unset or older than a
-- minute, so however many servers authenticate a busy key, it is written about once a minute.
CREATE FUNCTION kahn.touch_api_key(p_key_hash bytea) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
    UPDATE kahn.api_keys AS k SET last_used_at = pg_catalog.now()
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
      AND (k.last_used_at IS NULL
           OR k.last_used_at < pg_catalog.now() - pg_catalog.make_interval(mins => 1))
$$;

-- The personal tenant of JWT subject p_sub, created on first sign-in: named 'user:' || p_sub,
-- owned by p_sub, retention 90 days. Concurrent first sign-ins create one tenant (the insert
-- waits for the other's, then does nothing; the select, a new statement, sees it). NULL when
-- the name is held by a tenant owned by someone else: never shared. The caller (kahn-pg)
-- validates p_sub first; the checks here keep a direct call from storing what KAHN refuses.
CREATE FUNCTION kahn.provision_personal_tenant(p_sub text) RETURNS uuid
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
    INSERT INTO kahn.tenants AS t (id, name, owner_sub, retention_days, created_at)
    VALUES (pg_catalog.gen_random_uuid(), 'user:' || p_sub, p_sub, 90,
            pg_catalog.now())
    ON CONFLICT DO NOTHING;
    SELECT t.id INTO v_id FROM kahn.tenants AS t WHERE t.owner_sub = p_sub;
    RETURN v_id;
END
$$;

-- Purges one tenant as of p_now (NULL: the database's now()): removes its runs whose
-- received_at + retention has passed, with their transitions, and returns how many; on a dry
-- run removes nothing and returns what would go. The expired runs are locked first (waiting
-- for an append in flight, then re-checked against its outcome: an append that stored
-- something moved received_at, so the run is no longer expired); the deletes then run as new
-- statements, so they see every transition committed before the lock. The operator's (the
-- admin DSN, per tenant); EXECUTE is granted to nobody.
CREATE FUNCTION kahn.purge_tenant(p_tenant uuid, p_now timestamptz, p_dry_run boolean)
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
        DELETE FROM kahn.runs AS r
         WHERE r.tenant_id = p_tenant AND r.run_id = ANY (v_runs);
    END IF;
    RETURN QUERY SELECT v_runs_n, v_rows_n;
END
$$;

-- The app role's purge: every tenant at the database's now(), no time, tenant or mode to pass.
-- Each tenant is purged in a subtransaction of its own: one tenant's failure is reported (its
-- SQLSTATE and message in `failure`) and neither undoes nor hides the others' purges. Only
-- tenants that lose something (or fail) are returned.
DROP FUNCTION kahn.purge_expired();
DROP FUNCTION kahn.purge_expired_at(timestamptz);
CREATE FUNCTION kahn.purge_expired()
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
        SELECT t.id FROM kahn.tenants AS t
         WHERE EXISTS (SELECT FROM kahn.runs AS r
                        WHERE r.tenant_id = t.id
                          AND r.received_at < pg_catalog.now()
                              - pg_catalog.make_interval(hours => 24 * t.retention_days))
         ORDER BY t.id
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

-- Ownership and EXECUTE, as in 0001: owned by kahn_definer, never PUBLIC's, the app role's
-- where it needs them (never purge_tenant, which takes a time).
GRANT CREATE ON SCHEMA kahn TO kahn_definer;
ALTER FUNCTION kahn.touch_api_key(bytea) OWNER TO kahn_definer;
ALTER FUNCTION kahn.provision_personal_tenant(text) OWNER TO kahn_definer;
ALTER FUNCTION kahn.purge_tenant(uuid, timestamptz, boolean) OWNER TO kahn_definer;
ALTER FUNCTION kahn.purge_expired() OWNER TO kahn_definer;
REVOKE CREATE ON SCHEMA kahn FROM kahn_definer;

REVOKE ALL ON FUNCTION
    kahn.touch_api_key(bytea), kahn.provision_personal_tenant(text),
    kahn.purge_tenant(uuid, timestamptz, boolean), kahn.purge_expired()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    kahn.touch_api_key(bytea), kahn.provision_personal_tenant(text), kahn.purge_expired()
    TO kahn_app;
