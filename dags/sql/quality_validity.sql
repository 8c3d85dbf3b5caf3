-- Validity: every candle is a possible one.
SELECT count(*) FILTER (WHERE NOT (low <= open AND open <= high AND low <= close AND close <= high
                                   AND volume >= 0 AND trade_count > 0)) = 0
FROM candles_1m
WHERE window_start >= %(start)s AND window_start < %(end)s
      AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[]))
