-- Least privilege, re-runnable; run by the owner after schema.sql. The writer may add and update
-- rows of the sink tables (SELECT too: an upsert's ON CONFLICT reads the row), never delete or
-- change the schema; the reader only reads.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO crypto_writer, crypto_reader;
GRANT SELECT, INSERT, UPDATE ON trades, candles_1m, stats_5m, alerts, quality_results, candles_1h, candles_1d, indicators_1m, reports TO crypto_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO crypto_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO crypto_reader;
