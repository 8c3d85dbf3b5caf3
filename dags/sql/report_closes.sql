-- Every 1-minute close in [start, end) per symbol, in time order: the report's price chart.
SELECT symbol, window_start, close
FROM candles_1m
WHERE window_start >= %(start)s AND window_start < %(end)s
  AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[]))
ORDER BY symbol, window_start
