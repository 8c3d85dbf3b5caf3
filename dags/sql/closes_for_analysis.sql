-- 1-minute closes of the interval per symbol, with enough history before it for the indicators' warm-up.
SELECT symbol, window_start, close
FROM candles_1m
WHERE window_start >= %(start)s::timestamptz - make_interval(mins => %(warmup)s)
  AND window_start < %(end)s
  AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[]))
ORDER BY symbol, window_start
