#!/usr/bin/env bash
# First start of the postgres container only (docker-entrypoint-initdb.d):
# creates the Airflow metadata database and its owner role.
#
# The password is read from a file (compose secret), never from an
# environment variable or this script. Names can be overridden with
# AIRFLOW_DB_USER / AIRFLOW_DB_NAME; the password file with
# AIRFLOW_DB_PASSWORD_FILE (default /run/secrets/airflow_db_password).
set -euo pipefail

airflow_user="${AIRFLOW_DB_USER:-airflow}"
airflow_db="${AIRFLOW_DB_NAME:-airflow}"
password_file="${AIRFLOW_DB_PASSWORD_FILE:-/run/secrets/airflow_db_password}"

if [[ ! -s "$password_file" ]]; then
    echo "00-airflow-db.sh: password file $password_file is missing or empty" >&2
    exit 1
fi

# psql reads the password itself (backquote substitution), so it never shows
# up in a process list.
psql -v ON_ERROR_STOP=1 --no-psqlrc \
    --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v airflow_user="$airflow_user" -v airflow_db="$airflow_db" \
    -v password_file="$password_file" <<'SQL'
\set airflow_password `cat :password_file`
CREATE ROLE :"airflow_user" LOGIN PASSWORD :'airflow_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
CREATE DATABASE :"airflow_db" OWNER :"airflow_user";
-- Only roles that are granted CONNECT explicitly may connect.
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"airflow_db" TO :"airflow_user";
SQL
echo "00-airflow-db.sh: created role $airflow_user and database $airflow_db"
