-- Roles and the database, run by a superuser; re-runnable. Passwords arrive as query parameters.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crypto') THEN
        CREATE ROLE crypto LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crypto_writer') THEN
        CREATE ROLE crypto_writer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crypto_reader') THEN
        CREATE ROLE crypto_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;
ALTER ROLE crypto PASSWORD %(owner_password)s;
ALTER ROLE crypto_writer PASSWORD %(writer_password)s;
ALTER ROLE crypto_reader PASSWORD %(reader_password)s;
