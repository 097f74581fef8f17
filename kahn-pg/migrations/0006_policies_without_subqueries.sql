-- Tenant isolation policies without a subquery (DESIGN.md "Scale-out"): Citus refuses
-- subqueries in the policies of distributed tables, and `tenant_id = kahn.current_tenant()` is
-- the same predicate. The function is STABLE, so it is evaluated once per index scan (an index
-- condition on tenant_id), not per row. kahn.run_nodes (0005) was created this way already.
-- Replaced in place: the policies keep their names, roles and commands, so the app role's
-- startup check (which knows both spellings) accepts the database before and after.

ALTER POLICY tenant_isolation ON kahn.tenants
    USING (id = kahn.current_tenant())
    WITH CHECK (id = kahn.current_tenant());
ALTER POLICY tenant_isolation ON kahn.api_keys
    USING (tenant_id = kahn.current_tenant())
    WITH CHECK (tenant_id = kahn.current_tenant());
ALTER POLICY tenant_isolation ON kahn.runs
    USING (tenant_id = kahn.current_tenant())
    WITH CHECK (tenant_id = kahn.current_tenant());
ALTER POLICY tenant_isolation ON kahn.transitions
    USING (tenant_id = kahn.current_tenant())
    WITH CHECK (tenant_id = kahn.current_tenant());
