#!/bin/bash
# First start of the compose PostgreSQL: Airflow's metadata database and its own role.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -v pw="$AIRFLOW_DB_PASSWORD" --username "$POSTGRES_USER" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'pw';
CREATE DATABASE airflow OWNER airflow;
SQL
