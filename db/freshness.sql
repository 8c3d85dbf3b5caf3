-- Per symbol: the newest trade and the newest candle in PostgreSQL, event time in epoch seconds (make status,
-- ops.monitor every scrape): the symbols in %(include)s whatever their age (the ones the source follows: one gone
-- stale is the news), then the %(limit)s freshest others. A GROUP BY would read every trade; this skips from
-- symbol to symbol along the primary key and reads one index entry per symbol and table.
WITH RECURSIVE symbols AS (
    (SELECT symbol FROM trades ORDER BY symbol LIMIT 1)
    UNION ALL
    SELECT (SELECT t.symbol FROM trades t WHERE t.symbol > s.symbol ORDER BY t.symbol LIMIT 1)
    FROM symbols s WHERE s.symbol IS NOT NULL
)
SELECT s.symbol,
       extract(epoch FROM (SELECT max(t.trade_time) FROM trades t WHERE t.symbol = s.symbol)) AS last_trade,
       extract(epoch FROM (SELECT max(c.window_start) FROM candles_1m c WHERE c.symbol = s.symbol)) AS last_candle
FROM symbols s
WHERE s.symbol IS NOT NULL
ORDER BY s.symbol = ANY(%(include)s) DESC, last_trade DESC
LIMIT %(limit)s + cardinality(%(include)s::text[]);
