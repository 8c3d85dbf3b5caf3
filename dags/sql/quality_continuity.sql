-- Continuity: no pipeline gap, i.e. no minute with trades but without its candle. Minutes where no
-- symbol traded at all are exchange-wide gaps (nothing to aggregate) and pass.
SELECT count(*) = 0
FROM (
    SELECT DISTINCT symbol, date_trunc('minute', trade_time) AS window_start
    FROM trades
    WHERE trade_time >= %(start)s AND trade_time < %(end)s
      AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[]))
) traded
LEFT JOIN candles_1m c USING (symbol, window_start)
WHERE c.symbol IS NULL
