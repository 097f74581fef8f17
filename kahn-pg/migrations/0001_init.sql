-- KAHN on Postgres, version 1: schema `kahn`, the roles, tenant tables under Row-Level
-- Security that cannot be silently inert, least-privilege grants and the SECURITY DEFINER
-- functions the app role needs before it knows its tenant.
--
-- Run by the admin DSN (the migrating role owns the schema and the tables). Roles are
-- cluster-global, so their creation is guarded: this migration runs in every database of a
-- cluster, concurrently too.

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------

DO $$
BEGIN
    -- The server's role: it logs in, owns nothing, never bypasses RLS.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'kahn_app') THEN
        BEGIN
            CREATE ROLE kahn_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE
                NOREPLICATION NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created concurrently by the migration of another database
        END;
    END IF;
    -- Owns the SECURITY DEFINER functions; sees past RLS through its own policies (below), so
    -- it needs no BYPASSRLS attribute (which managed Postgres often refuses to grant).
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'kahn_definer') THEN
        BEGIN
            CREATE ROLE kahn_definer NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE
                NOREPLICATION NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    -- A migrating role that is not a superuser must be able to hand the functions to
    -- kahn_definer and, as an operator, see every tenant through kahn_definer's policies.
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'kahn_definer', 'MEMBER') THEN
        GRANT kahn_definer TO CURRENT_USER;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Schema
-- ---------------------------------------------------------------------------------------------

CREATE SCHEMA kahn;
REVOKE ALL ON SCHEMA kahn FROM PUBLIC;
GRANT USAGE ON SCHEMA kahn TO kahn_app, kahn_definer;

-- The tenant of the current transaction: NULL when never set, or after a transaction-local
-- set_config ended (the setting then reads ''), never a cast error. Policies call it wrapped
-- in a SELECT, so it is an init-plan evaluated once per statement.
CREATE FUNCTION kahn.current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT NULLIF(pg_catalog.current_setting('kahn.tenant', true), '')::uuid $$;

-- ---------------------------------------------------------------------------------------------
-- Tables. tenant_id leads every primary and unique key of tenant data: uniqueness checks
-- bypass RLS, so a key without it could reveal that another tenant holds a value.
-- ---------------------------------------------------------------------------------------------

-- One row per tenant. Its unique keys (name, owner_sub, airlock_org_id) are global identity
-- mappings; the app role can neither insert nor update here, so it can never probe them.
CREATE TABLE kahn.tenants (
    id              uuid        NOT NULL,
    name            text        NOT NULL,
    owner_sub       text,
    airlock_org_id  text,
    retention_days  integer     NOT NULL DEFAULT 90 CHECK (retention_days BETWEEN 1 AND 36500),
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_name_key UNIQUE (name),
    CONSTRAINT tenants_owner_sub_key UNIQUE (owner_sub),
    CONSTRAINT tenants_airlock_org_id_key UNIQUE (airlock_org_id)
);

-- Only a SHA-256 of each key is stored.
CREATE TABLE kahn.api_keys (
    tenant_id   uuid        NOT NULL REFERENCES kahn.tenants (id) ON DELETE CASCADE,
    key_id      uuid        NOT NULL,
    key_hash    bytea       NOT NULL CHECK (octet_length(key_hash) = 32),
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CONSTRAINT api_keys_pkey PRIMARY KEY (tenant_id, key_id),
    CONSTRAINT api_keys_hash_key UNIQUE (tenant_id, key_hash)
);
-- Lookup by hash before the tenant is known (kahn.lookup_api_key). Not unique: a 256-bit
-- secret's hash does not collide, and a unique index here would not lead with tenant_id.
CREATE INDEX api_keys_by_hash ON kahn.api_keys (key_hash);

-- One row per run: the summary the append keeps current. JSON is stored as its RFC 8785
-- canonical text, never jsonb (jsonb refuses \u0000 and reformats, and reading back must
-- give exactly the hashed content).
CREATE TABLE kahn.runs (
    tenant_id    uuid        NOT NULL REFERENCES kahn.tenants (id) ON DELETE CASCADE,
    run_id       text        COLLATE "C" NOT NULL CHECK (octet_length(run_id) BETWEEN 1 AND 200),
    source       text,
    graph        text,                           -- canonical JSON of the DAG
    labels       text        NOT NULL DEFAULT '{}', -- JSON object of strings
    next_seq     bigint      NOT NULL DEFAULT 0 CHECK (next_seq >= 0),
    head_hash    bytea       NOT NULL CHECK (octet_length(head_hash) = 32),
    status_json  text,                           -- the last `to`, as a JSON string literal
    first_ts     timestamptz,
    last_ts      timestamptz,
    created_at   timestamptz NOT NULL,
    activity_at  timestamptz NOT NULL GENERATED ALWAYS AS (COALESCE(last_ts, created_at)) STORED,
    CONSTRAINT runs_pkey PRIMARY KEY (tenant_id, run_id)
);
CREATE INDEX runs_by_activity ON kahn.runs (tenant_id, activity_at DESC, run_id);

-- The log: append-only by grant (the app role has SELECT and INSERT only).
CREATE TABLE kahn.transitions (
    tenant_id     uuid   NOT NULL,
    run_id        text   COLLATE "C" NOT NULL,
    seq           bigint NOT NULL CHECK (seq >= 0),
    body          text   NOT NULL,               -- canonical JSON of the body
    content_hash  bytea  NOT NULL CHECK (octet_length(content_hash) = 32),
    chain_hash    bytea  NOT NULL CHECK (octet_length(chain_hash) = 32),
    CONSTRAINT transitions_pkey PRIMARY KEY (tenant_id, run_id, seq),
    CONSTRAINT transitions_run_fkey FOREIGN KEY (tenant_id, run_id)
        REFERENCES kahn.runs (tenant_id, run_id)
);

-- ---------------------------------------------------------------------------------------------
-- Row-Level Security: enabled AND forced (so the owner is bound too), on every tenant table.
-- ---------------------------------------------------------------------------------------------

ALTER TABLE kahn.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE kahn.tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE kahn.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE kahn.api_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE kahn.runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE kahn.runs FORCE ROW LEVEL SECURITY;
ALTER TABLE kahn.transitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE kahn.transitions FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON kahn.tenants
    USING (id = (SELECT kahn.current_tenant()))
    WITH CHECK (id = (SELECT kahn.current_tenant()));
CREATE POLICY tenant_isolation ON kahn.api_keys
    USING (tenant_id = (SELECT kahn.current_tenant()))
    WITH CHECK (tenant_id = (SELECT kahn.current_tenant()));
CREATE POLICY tenant_isolation ON kahn.runs
    USING (tenant_id = (SELECT kahn.current_tenant()))
    WITH CHECK (tenant_id = (SELECT kahn.current_tenant()));
CREATE POLICY tenant_isolation ON kahn.transitions
    USING (tenant_id = (SELECT kahn.current_tenant()))
    WITH CHECK (tenant_id = (SELECT kahn.current_tenant()));

-- The definer role (and the operators who are its members) sees every tenant.
CREATE POLICY definer_all ON kahn.tenants TO kahn_definer USING (true) WITH CHECK (true);
CREATE POLICY definer_all ON kahn.api_keys TO kahn_definer USING (true) WITH CHECK (true);
CREATE POLICY definer_all ON kahn.runs TO kahn_definer USING (true) WITH CHECK (true);
CREATE POLICY definer_all ON kahn.transitions TO kahn_definer USING (true) WITH CHECK (true);

-- ---------------------------------------------------------------------------------------------
-- Grants: least privilege.
-- ---------------------------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA kahn FROM PUBLIC;

-- The app role: the log is append-only by grant; the run summary is inserted and kept
-- current by the append; tenants and keys are reached only through the functions below.
GRANT SELECT, INSERT ON kahn.transitions TO kahn_app;
GRANT SELECT, INSERT ON kahn.runs TO kahn_app;
GRANT UPDATE (source, graph, labels, next_seq, head_hash, status_json, first_ts, last_ts)
    ON kahn.runs TO kahn_app;

-- The definer role: what the lookups, the admin listing and the retention purge need.
GRANT SELECT ON kahn.tenants, kahn.api_keys TO kahn_definer;
GRANT SELECT, DELETE ON kahn.runs, kahn.transitions TO kahn_definer;
-- The purge locks the runs it removes (SELECT … FOR UPDATE needs UPDATE on some column); no
-- function updates anything.
GRANT UPDATE (next_seq) ON kahn.runs TO kahn_definer;

-- ---------------------------------------------------------------------------------------------
-- SECURITY DEFINER functions: pre-tenant lookups, the admin listing, the retention purge.
-- Pinned search_path (pg_temp last, so a temporary object can never shadow anything), owned
-- by kahn_definer, EXECUTE revoked from PUBLIC and granted to the app role only.
-- ---------------------------------------------------------------------------------------------

-- The tenant of an active API key, by the key's SHA-256; NULL when unknown or revoked.
CREATE FUNCTION kahn.lookup_api_key(p_key_hash bytea) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
    SELECT k.tenant_id FROM kahn.api_keys AS k
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
    LIMIT 1
$$;

-- The tenant linked to an identity provider organisation; NULL when none.
CREATE FUNCTION kahn.lookup_tenant_by_org(p_org_id text) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$ SELECT t.id FROM kahn.tenants AS t WHERE t.airlock_org_id = p_org_id $$;

-- The personal tenant of a JWT subject; NULL when none.
CREATE FUNCTION kahn.lookup_tenant_by_sub(p_sub text) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$ SELECT t.id FROM kahn.tenants AS t WHERE t.owner_sub = p_sub $$;

-- One tenant by id (the admin override checks the tenant exists); no row when unknown.
CREATE FUNCTION kahn.get_tenant(p_tenant_id uuid)
    RETURNS TABLE (id uuid, name text, owner_sub text, airlock_org_id text,
                   retention_days integer, created_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
    SELECT t.id, t.name, t.owner_sub, t.airlock_org_id, t.retention_days, t.created_at
    FROM kahn.tenants AS t WHERE t.id = p_tenant_id
$$;

-- Every tenant with its run count, by name (GET /api/admin/tenants).
CREATE FUNCTION kahn.admin_list_tenants()
    RETURNS TABLE (id uuid, name text, owner_sub text, airlock_org_id text,
                   retention_days integer, created_at timestamptz, run_count bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
    SELECT t.id, t.name, t.owner_sub, t.airlock_org_id, t.retention_days, t.created_at,
           (SELECT count(*) FROM kahn.runs AS r WHERE r.tenant_id = t.id)
    FROM kahn.tenants AS t
    ORDER BY t.name COLLATE "C"
$$;

-- Removes every run whose last activity is older than its tenant's retention at p_now, with
-- its transitions; reports per tenant that lost anything. The expired runs are locked first
-- (waiting for an append in flight, then re-checked against its outcome); the deletes then
-- run as new statements, so they see every transition committed before the lock.
CREATE FUNCTION kahn.purge_expired(p_now timestamptz)
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

-- A non-superuser migrating role may hand a function only to a role that could create it.
GRANT CREATE ON SCHEMA kahn TO kahn_definer;
ALTER FUNCTION kahn.lookup_api_key(bytea) OWNER TO kahn_definer;
ALTER FUNCTION kahn.lookup_tenant_by_org(text) OWNER TO kahn_definer;
ALTER FUNCTION kahn.lookup_tenant_by_sub(text) OWNER TO kahn_definer;
ALTER FUNCTION kahn.get_tenant(uuid) OWNER TO kahn_definer;
ALTER FUNCTION kahn.admin_list_tenants() OWNER TO kahn_definer;
ALTER FUNCTION kahn.purge_expired(timestamptz) OWNER TO kahn_definer;
REVOKE CREATE ON SCHEMA kahn FROM kahn_definer;

REVOKE ALL ON FUNCTION
    kahn.lookup_api_key(bytea), kahn.lookup_tenant_by_org(text), kahn.lookup_tenant_by_sub(text),
    kahn.get_tenant(uuid), kahn.admin_list_tenants(), kahn.purge_expired(timestamptz)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    kahn.lookup_api_key(bytea), kahn.lookup_tenant_by_org(text), kahn.lookup_tenant_by_sub(text),
    kahn.get_tenant(uuid), kahn.admin_list_tenants(), kahn.purge_expired(timestamptz)
    TO kahn_app;
