-- Least privilege, re-runnable; run by the owner after schema.sql and retention.sql. The table privileges
-- of the writer, airflow and retention roles are revoked first and granted again, so each ends with exactly
-- its list, also on a cluster from before (when the writer wrote the DAGs' tables too). Each write comes
-- with SELECT: an upsert's ON CONFLICT reads the row. Nobody but the owner may delete or change the schema.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO crypto_writer, crypto_airflow, crypto_retention, crypto_backfill, crypto_reader;
REVOKE ALL ON trades, candles_1m, stats_5m, alerts, quality_results, candles_1h, candles_1d, indicators_1m, reports
    FROM crypto_writer, crypto_airflow, crypto_retention, crypto_backfill;
-- Kafka Connect's JDBC sinks (connectors/*.json).
GRANT SELECT, INSERT, UPDATE ON trades, candles_1m, stats_5m, alerts TO crypto_writer;
-- The DAGs: they read what the pipeline loaded and write their results; a failed quality check is also
-- recorded as an alert.
GRANT SELECT ON trades, candles_1m, stats_5m TO crypto_airflow;
GRANT SELECT, INSERT, UPDATE ON alerts, quality_results, candles_1h, candles_1d, indicators_1m, reports TO crypto_airflow;
-- kafka_reconciliation's repairs: trades Kafka has and the table lacks, inserted with ON CONFLICT DO NOTHING and
-- no conflict target (naming one needs SELECT): it can neither change nor delete a trade, nor read one.
GRANT INSERT ON trades TO crypto_backfill;
-- Retention: only the function. Functions are executable by PUBLIC unless revoked.
REVOKE ALL ON FUNCTION delete_old_trades(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION delete_old_trades(timestamptz, integer) TO crypto_retention;
-- People and reports: read everything, also tables added later.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO crypto_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO crypto_reader;
