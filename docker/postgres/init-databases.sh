#!/bin/sh
# Runs once, when the Postgres data volume is empty (/docker-entrypoint-initdb.d): one role
# and database per service. MLflow gets two databases, the tracking/registry store and the
# user store of its basic-auth app; Prefect gets one.
set -eu

: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
: "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" \
    -v mlflow_password="${MLFLOW_DB_PASSWORD}" -v prefect_password="${PREFECT_DB_PASSWORD}" <<'EOSQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
EOSQL
