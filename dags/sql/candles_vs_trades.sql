-- Candles recomputed from the trades table (open/close by aggTrade id) that differ from candles_1m, in
-- either direction, for the minutes in [start, end) and the given symbols (all when NULL). No row back
-- means the two agree exactly. Used by data_quality_check and by make demo.
WITH recomputed AS (
    SELECT symbol,
           date_trunc('minute', trade_time) AS window_start,
           (array_agg(price ORDER BY agg_id))[1] AS open,
           max(price) AS high,
           min(price) AS low,
           (array_agg(price ORDER BY agg_id DESC))[1] AS close,
           sum(qty) AS volume,
           sum(price * qty) AS quote_volume,
           count(*) AS trade_count
    FROM trades
    WHERE trade_time >= %(start)s AND trade_time < %(end)s
      AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[]))
    GROUP BY symbol, date_trunc('minute', trade_time)
), stored AS (
    SELECT symbol, window_start, open, high, low, close, volume, quote_volume, trade_count
    FROM candles_1m
    WHERE window_start >= %(start)s AND window_start < %(end)s
      AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[]))
)
(SELECT 'missing or different in candles_1m' AS problem, * FROM (SELECT * FROM recomputed EXCEPT SELECT * FROM stored) a)
UNION ALL
(SELECT 'not backed by trades' AS problem, * FROM (SELECT * FROM stored EXCEPT SELECT * FROM recomputed) b)
ORDER BY 2, 3
LIMIT 20
