#!/usr/bin/env bash
# First start of the postgres container only (docker-entrypoint-initdb.d):
# creates the login role that airflow-metrics-bridge uses to read the Airflow
# metadata DB.
#
# The role gets no table privileges here: the Airflow tables do not exist yet
# (airflow-init creates them later). The one-shot compose service
# bridge-grants runs ../grant-bridge-readonly.sql afterwards, which grants
# SELECT on exactly the tables the bridge reads.
#
# Overrides: BRIDGE_DB_ROLE (default airflow_bridge), AIRFLOW_DB_NAME (default
# airflow), BRIDGE_DB_PASSWORD_FILE (default /run/secrets/bridge_db_password),
# BRIDGE_STATEMENT_TIMEOUT (default 30s).
set -euo pipefail

bridge_role="${BRIDGE_DB_ROLE:-airflow_bridge}"
airflow_db="${AIRFLOW_DB_NAME:-airflow}"
password_file="${BRIDGE_DB_PASSWORD_FILE:-/run/secrets/bridge_db_password}"
statement_timeout="${BRIDGE_STATEMENT_TIMEOUT:-30s}"

if [[ ! -s "$password_file" ]]; then
    echo "10-bridge-readonly-role.sh: password file $password_file is missing or empty" >&2
    exit 1
fi

psql -v ON_ERROR_STOP=1 --no-psqlrc \
    --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v bridge_role="$bridge_role" -v airflow_db="$airflow_db" \
    -v password_file="$password_file" -v statement_timeout="$statement_timeout" <<'SQL'
\set bridge_password `cat :password_file`
CREATE ROLE :"bridge_role" LOGIN PASSWORD :'bridge_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT
    CONNECTION LIMIT 10;
-- Every session of the role starts read-only and cannot run away.
ALTER ROLE :"bridge_role" SET default_transaction_read_only = on;
ALTER ROLE :"bridge_role" SET statement_timeout = :'statement_timeout';
ALTER ROLE :"bridge_role" SET lock_timeout = '5s';
ALTER ROLE :"bridge_role" SET idle_in_transaction_session_timeout = '60s';
GRANT CONNECT ON DATABASE :"airflow_db" TO :"bridge_role";
SQL
echo "10-bridge-readonly-role.sh: created read-only role $bridge_role"
