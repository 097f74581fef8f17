-- Stateless servers (DESIGN.md "Scale-out"): what every `kahn serve` on one database must
-- share lives here, not in process memory, so N servers allow a tenant its ingest rate once
-- (not N times) and purge once per interval (not N times). Nothing here holds session state:
-- each is one statement (or one transaction), so a transaction-pooling pgbouncer in front
-- changes nothing.
--
-- * kahn.ingest_budget: one row per tenant, its GCRA "theoretical arrival time" (tat) at the
--   database's clock. Tenant data like the rest: tenant_id leads the key, RLS enabled and
--   forced, the isolation predicate without a subquery (Citus distributes it by tenant_id).
--   The app role holds no privilege on it: it charges through kahn.charge_ingest (SECURITY
--   DEFINER, owned by kahn_definer), which reads the clock itself — never the caller's.
-- * kahn.purge_turn: one row, when the last retention purge started and how many have run.
--   kahn.take_purge_turn(every) gives the turn to one caller per interval; the row stays
--   locked until the caller's transaction (its purge) ends, so a concurrent caller finds it
--   taken at once (SKIP LOCKED) instead of waiting, and never purges alongside.

CREATE TABLE kahn.ingest_budget (
    tenant_id uuid        NOT NULL,
    tat       timestamptz NOT NULL,
    CONSTRAINT ingest_budget_pkey PRIMARY KEY (tenant_id)
);

ALTER TABLE kahn.ingest_budget ENABLE ROW LEVEL SECURITY;
ALTER TABLE kahn.ingest_budget FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kahn.ingest_budget
    USING (tenant_id = kahn.current_tenant())
    WITH CHECK (tenant_id = kahn.current_tenant());
CREATE POLICY definer_all ON kahn.ingest_budget TO kahn_definer USING (true) WITH CHECK (true);

REVOKE ALL ON kahn.ingest_budget FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE (tat) ON kahn.ingest_budget TO kahn_definer;

-- Charges p_cost units of p_tenant's allowance of p_rate units a second (burst p_rate; a
-- cost above it counts as the whole burst). Returns 0 when admitted; else, charging nothing,
-- the microseconds until the same charge would be admitted. GCRA: each unit moves tat by
-- 1/p_rate s; a charge is admitted while tat stays within one second (the burst) of now.
CREATE FUNCTION kahn.charge_ingest(p_tenant uuid, p_cost integer, p_rate integer)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
DECLARE
    v_now  timestamptz := pg_catalog.clock_timestamp();
    v_step interval;
    v_tat  timestamptz;
BEGIN
    IF p_tenant IS NULL OR p_cost IS NULL OR p_rate IS NULL OR p_cost < 1 OR p_rate < 1 THEN
        RAISE EXCEPTION 'kahn.charge_ingest needs a tenant, a cost of at least 1 and a rate of at least 1'
            USING ERRCODE = '22023';
    END IF;
    v_step := pg_catalog.make_interval(
        secs => LEAST(p_cost, p_rate)::double precision / p_rate::double precision);
    INSERT INTO kahn.ingest_budget AS b (tenant_id, tat)
    VALUES (p_tenant, v_now + v_step)
    ON CONFLICT ON CONSTRAINT ingest_budget_pkey DO UPDATE
        SET tat = GREATEST(b.tat, v_now) + v_step
        WHERE GREATEST(b.tat, v_now) + v_step <= v_now + interval '1 second'
    RETURNING b.tat INTO v_tat;
    IF FOUND THEN
        RETURN 0;
    END IF;
    -- Refused: the conflicting row is locked by the INSERT above, so this reads the tat that
    -- refused it.
    SELECT b.tat INTO v_tat FROM kahn.ingest_budget AS b WHERE b.tenant_id = p_tenant;
    RETURN GREATEST(1, pg_catalog.ceil(pg_catalog.date_part('epoch',
        GREATEST(v_tat, v_now) + v_step - interval '1 second' - v_now) * 1000000))::bigint;
END
$$;

CREATE TABLE kahn.purge_turn (
    singleton       boolean     NOT NULL DEFAULT true CHECK (singleton),
    last_started_at timestamptz,
    purges          bigint      NOT NULL DEFAULT 0 CHECK (purges >= 0),
    CONSTRAINT purge_turn_pkey PRIMARY KEY (singleton)
);
INSERT INTO kahn.purge_turn DEFAULT VALUES;
REVOKE ALL ON kahn.purge_turn FROM PUBLIC;
GRANT SELECT, UPDATE (last_started_at, purges) ON kahn.purge_turn TO kahn_definer;

-- True when the caller has the retention purge's turn: no purge started within p_every and
-- none is running (the row is locked by the caller holding the turn until its transaction
-- ends). Taking the turn records its start, at the database's clock, and counts it.
CREATE FUNCTION kahn.take_purge_turn(p_every interval)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, kahn, pg_temp
AS $$
DECLARE
    v_last timestamptz;
BEGIN
    IF p_every IS NULL OR p_every < interval '0' THEN
        RAISE EXCEPTION 'kahn.take_purge_turn needs an interval of at least zero'
            USING ERRCODE = '22023';
    END IF;
    SELECT t.last_started_at INTO v_last FROM kahn.purge_turn AS t
     WHERE t.singleton FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_last IS NOT NULL AND v_last > pg_catalog.clock_timestamp() - p_every THEN
        RETURN false;
    END IF;
    UPDATE kahn.purge_turn AS t
       SET last_started_at = pg_catalog.clock_timestamp(), purges = t.purges + 1
     WHERE t.singleton;
    RETURN true;
END
$$;

-- Ownership and EXECUTE as for the other SECURITY DEFINER functions: owned by kahn_definer,
-- never PUBLIC's, the app role's.
GRANT CREATE ON SCHEMA kahn TO kahn_definer;
ALTER FUNCTION kahn.charge_ingest(uuid, integer, integer) OWNER TO kahn_definer;
ALTER FUNCTION kahn.take_purge_turn(interval) OWNER TO kahn_definer;
REVOKE CREATE ON SCHEMA kahn FROM kahn_definer;

REVOKE ALL ON FUNCTION kahn.charge_ingest(uuid, integer, integer), kahn.take_purge_turn(interval)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kahn.charge_ingest(uuid, integer, integer), kahn.take_purge_turn(interval)
    TO kahn_app;
