-- Freshness: the interval has candles, and the newest is no older than the interval's last 5 minutes.
SELECT count(*) > 0 AND max(window_start) >= %(end)s::timestamptz - interval '5 minutes'
FROM candles_1m
WHERE window_start >= %(start)s AND window_start < %(end)s
      AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[]))
