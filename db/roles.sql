-- Roles, run by a superuser; re-runnable. Passwords arrive as query parameters, and every run sets them
-- again from the settings, so editing .env and `make up` rotates them. The attributes are set on every
-- run too: none of these roles may ever create roles or databases.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crypto') THEN
        CREATE ROLE crypto;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crypto_writer') THEN
        CREATE ROLE crypto_writer;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crypto_airflow') THEN
        CREATE ROLE crypto_airflow;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crypto_retention') THEN
        CREATE ROLE crypto_retention;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crypto_backfill') THEN
        CREATE ROLE crypto_backfill;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crypto_reader') THEN
        CREATE ROLE crypto_reader;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crypto_monitor') THEN
        CREATE ROLE crypto_monitor;
    END IF;
END
$$;
ALTER ROLE crypto LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %(owner_password)s;
ALTER ROLE crypto_writer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %(writer_password)s;
ALTER ROLE crypto_airflow LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %(airflow_password)s;
ALTER ROLE crypto_retention LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %(retention_password)s;
ALTER ROLE crypto_backfill LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %(backfill_password)s;
ALTER ROLE crypto_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %(reader_password)s;
ALTER ROLE crypto_monitor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %(monitor_password)s;
-- The PostgreSQL exporter's: the statistics views (pg_stat_*, pg_database_size), never a table's rows.
GRANT pg_monitor TO crypto_monitor;
