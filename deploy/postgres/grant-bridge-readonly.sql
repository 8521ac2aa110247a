-- Grant airflow-metrics-bridge's read-only role SELECT on exactly the Airflow
-- metadata tables the bridge reads, and nothing else.
--
-- Run it in the Airflow metadata database as the table owner (the Airflow DB
-- user) or a superuser, after the Airflow tables exist:
--
--   psql -v ON_ERROR_STOP=1 -d airflow -f grant-bridge-readonly.sql
--   psql -v ON_ERROR_STOP=1 -v bridge_role=my_role -d airflow -f grant-bridge-readonly.sql
--
-- The role must exist already (deploy/postgres/init/10-bridge-readonly-role.sh
-- creates it in the compose stack; deploy/OPERATIONS.md shows the SQL for an
-- existing database). Tables are looked up through the search_path, like
-- Airflow does, so a non-default schema works when the session's search_path
-- points at it; the role also gets USAGE on that schema if it lacks it.
-- Tables that do not exist in this Airflow version are skipped:
-- task_instance_history, before Airflow 2.10. Every version keeps import
-- errors in import_error (Airflow 3's ParseImportError model included); no
-- version has a parse_import_error table, so that entry of the list is always
-- skipped. This is why the script, not a plain GRANT listing the tables, is
-- the way to grant: a GRANT naming task_instance_history fails on Airflow
-- 2.7-2.9 with `relation "task_instance_history" does not exist`.
-- Re-running is harmless; re-run it after an Airflow upgrade.

\if :{?bridge_role}
\else
\set bridge_role airflow_bridge
\endif
SELECT set_config('bridge_grants.role', :'bridge_role', false) AS bridge_role;

DO $grant$
DECLARE
    role_name  text := current_setting('bridge_grants.role');
    table_name text;
    rel        regclass;
    rel_kind   "char";
    schema     text;
    granted    text[] := '{}';
    skipped    text[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
        RAISE EXCEPTION 'role "%" does not exist; create it first (see deploy/OPERATIONS.md)', role_name;
    END IF;

    IF NOT has_database_privilege(role_name, current_database(), 'CONNECT') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);
    END IF;

    FOREACH table_name IN ARRAY ARRAY[
        'dag_run', 'task_instance', 'task_instance_history', 'xcom', 'slot_pool',
        'job', 'dag', 'dag_tag', 'import_error', 'parse_import_error', 'alembic_version'
    ] LOOP
        rel := to_regclass(quote_ident(table_name));
        IF rel IS NULL THEN
            skipped := skipped || table_name;
            CONTINUE;
        END IF;
        SELECT c.relkind, n.nspname INTO rel_kind, schema
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = rel;
        IF rel_kind NOT IN ('r', 'p', 'v', 'm', 'f') THEN
            skipped := skipped || table_name;
            CONTINUE;
        END IF;
        IF NOT has_schema_privilege(role_name, schema, 'USAGE') THEN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', schema, role_name);
        END IF;
        EXECUTE format('GRANT SELECT ON TABLE %s TO %I', rel, role_name);
        granted := granted || rel::text;
    END LOOP;

    RAISE NOTICE 'granted SELECT to % on: %', role_name, array_to_string(granted, ', ');
    IF cardinality(skipped) > 0 THEN
        RAISE NOTICE 'not present here, skipped: %', array_to_string(skipped, ', ');
    END IF;
END
$grant$;

-- For review: every relation outside the system schemas that the role can
-- read (directly or through PUBLIC), and whether it could also write to it.
SELECT n.nspname AS schema_name,
       c.relname AS table_name,
       has_table_privilege(current_setting('bridge_grants.role'), c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
           AS can_write
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg_toast%'
   AND has_table_privilege(current_setting('bridge_grants.role'), c.oid, 'SELECT')
 ORDER BY 1, 2;
