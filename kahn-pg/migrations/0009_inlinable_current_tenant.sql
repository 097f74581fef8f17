-- kahn.current_tenant() made inlinable (issue 15, measured): with its `SET search_path` clause
-- Postgres could not inline it, and since 0006 the policies call it without a sub-select, so
-- every row an append inserted (WITH CHECK) and every row a read filtered paid a full function
-- call with a GUC save and restore around it. A 100k-transition push spent 1.24 s in its
-- transitions INSERTs with the clause and 0.58 s without it (log_min_duration_statement).
--
-- Without the clause the planner substitutes the body into each policy, so the predicate is
-- `tenant_id = NULLIF(current_setting('kahn.tenant', true), '')::uuid`, unchanged in meaning:
-- never set, or reset to '' after a transaction-local set → NULL → zero rows, never a cast
-- error. The body names its function and type by schema; it runs as the caller (it is not
-- SECURITY DEFINER), and a caller able to change its own search_path can set kahn.tenant
-- anyway, so the pinned search_path protected nothing the caller does not already hold.
-- The policies are untouched (they still read `tenant_id = kahn.current_tenant()`), and so is
-- the app role's EXECUTE grant.

CREATE OR REPLACE FUNCTION kahn.current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT NULLIF(pg_catalog.current_setting('kahn.tenant', true), '')::pg_catalog.uuid $$;
