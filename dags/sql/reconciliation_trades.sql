-- The window's trades in PostgreSQL, for kafka_reconciliation to compare with the topic: trade time in epoch
-- milliseconds, as Kafka's records carry it.
SELECT symbol, agg_id, (extract(epoch FROM trade_time) * 1000)::bigint AS trade_time_ms
FROM trades
WHERE trade_time >= %(start)s AND trade_time < %(end)s
      AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[]))
