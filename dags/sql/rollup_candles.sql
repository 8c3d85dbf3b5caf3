-- Roll 1-minute candles up into `table` (`unit` buckets), for every bucket that touches [start, end). Each
-- bucket is recomputed whole from candles_1m, so re-running is idempotent. Included by rollup_candles_1h.sql
-- and rollup_candles_1d.sql, which set `table` and `unit`: identifiers come from those files, never from
-- params (a run's conf can override any param).
INSERT INTO {{ table }} AS r
    (symbol, window_start, window_end, open, high, low, close, volume, quote_volume, trade_count, vwap)
SELECT symbol,
       date_trunc('{{ unit }}', window_start) AS bucket,
       date_trunc('{{ unit }}', window_start) + interval '1 {{ unit }}',
       (array_agg(open ORDER BY window_start))[1],
       max(high),
       min(low),
       (array_agg(close ORDER BY window_start DESC))[1],
       sum(volume),
       sum(quote_volume),
       sum(trade_count),
       round(sum(quote_volume) / nullif(sum(volume), 0), 8)
FROM candles_1m
WHERE window_start >= date_trunc('{{ unit }}', %(start)s::timestamptz)
  AND window_start < date_trunc('{{ unit }}', %(end)s::timestamptz - interval '1 microsecond')
                     + interval '1 {{ unit }}'
GROUP BY symbol, date_trunc('{{ unit }}', window_start)
ON CONFLICT (symbol, window_start) DO UPDATE SET
    window_end = EXCLUDED.window_end, open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
    close = EXCLUDED.close, volume = EXCLUDED.volume, quote_volume = EXCLUDED.quote_volume,
    trade_count = EXCLUDED.trade_count, vwap = EXCLUDED.vwap
