-- A trade Kafka holds and `trades` lacks, inserted by kafka_reconciliation as crypto_backfill (INSERT only).
-- DO NOTHING, not an update: a row already there (the sink was faster) stays as the sink wrote it, and a
-- re-run inserts nothing. No conflict target: naming (symbol, agg_id) would need SELECT on those columns,
-- and the primary key is the table's only unique constraint.
INSERT INTO trades (symbol, agg_id, price, qty, first_trade_id, last_trade_id, trade_time, is_buyer_maker)
VALUES (%(symbol)s, %(agg_id)s, %(price)s, %(qty)s, %(first_trade_id)s, %(last_trade_id)s, %(trade_time)s,
        %(is_buyer_maker)s)
ON CONFLICT DO NOTHING
