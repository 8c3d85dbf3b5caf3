-- Uniqueness: one candle per symbol and minute, one trade per symbol and id.
SELECT (SELECT count(*) = count(DISTINCT (symbol, window_start)) FROM candles_1m
        WHERE window_start >= %(start)s AND window_start < %(end)s
          AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[])))
   AND (SELECT count(*) = count(DISTINCT (symbol, agg_id)) FROM trades
        WHERE trade_time >= %(start)s AND trade_time < %(end)s
          AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[])))
