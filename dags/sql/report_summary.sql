-- The report's table: one row per symbol with candles in [start, end). Open is the first minute's open and
-- close the last minute's close; VWAP is the window's quote volume over its volume. Alerts are the symbol's
-- alerts whose window starts in the interval; the 5-minute stats are those windows lying wholly inside it.
WITH c AS (
    SELECT symbol,
           (array_agg(open ORDER BY window_start))[1]       AS open,
           max(high)                                        AS high,
           min(low)                                         AS low,
           (array_agg(close ORDER BY window_start DESC))[1] AS close,
           sum(volume)                                      AS volume,
           sum(quote_volume)                                AS quote_volume,
           sum(trade_count)                                 AS trades,
           count(*)                                         AS candles
    FROM candles_1m
    WHERE window_start >= %(start)s AND window_start < %(end)s
      AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[]))
    GROUP BY symbol
), a AS (
    SELECT symbol, count(*) AS alerts
    FROM alerts
    WHERE window_start >= %(start)s AND window_start < %(end)s AND symbol IN (SELECT symbol FROM c)
    GROUP BY symbol
), s AS (
    SELECT symbol, max(range_pct) AS max_range_pct, max(volatility_pct) AS max_volatility_pct
    FROM stats_5m
    WHERE window_start >= %(start)s AND window_end <= %(end)s AND symbol IN (SELECT symbol FROM c)
    GROUP BY symbol
)
SELECT c.symbol, c.open, c.high, c.low, c.close,
       (c.close - c.open) / NULLIF(c.open, 0) * 100 AS change_pct,
       c.volume, c.quote_volume, c.trades,
       c.quote_volume / NULLIF(c.volume, 0)        AS vwap,
       c.candles, coalesce(a.alerts, 0)            AS alerts,
       s.max_range_pct, s.max_volatility_pct
FROM c LEFT JOIN a USING (symbol) LEFT JOIN s USING (symbol)
ORDER BY c.symbol
