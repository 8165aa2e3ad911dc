-- Tenant isolation: every row of the event and snapshot tables is visible to, and writable by,
-- a transaction only when the row's tenant is the transaction's `es.tenant` setting, which the
-- store sets with `set_config('es.tenant', $1, true)` at the start of each transaction on a
-- tenant's data.
--
-- FORCE: the tables' owner is bound too (without it, the owner, often the role that migrates
-- and sometimes the application's, bypasses every policy). Superusers and roles with BYPASSRLS
-- always bypass them: that is the role for projections and relays that read every tenant.
--
-- `current_setting('es.tenant', true)` is NULL in a session that never set it, and '' in one
-- whose earlier transaction set it locally (the setting then reverts to the empty string).
-- Neither matches a row: a tenant id is never empty (es_core::contract).
--
-- Idempotent: `PgStore::migrate` runs it, when tenant isolation is on, unless every table
-- already has row level security forced and its policy.
ALTER TABLE {schema}.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE {schema}.events FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS es_tenant_isolation ON {schema}.events;
CREATE POLICY es_tenant_isolation ON {schema}.events
    USING (tenant = current_setting('es.tenant', true))
    WITH CHECK (tenant = current_setting('es.tenant', true));

ALTER TABLE {schema}.snapshots ENABLE ROW LEVEL SECURITY;
ALTER TABLE {schema}.snapshots FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS es_tenant_isolation ON {schema}.snapshots;
CREATE POLICY es_tenant_isolation ON {schema}.snapshots
    USING (tenant = current_setting('es.tenant', true))
    WITH CHECK (tenant = current_setting('es.tenant', true));
