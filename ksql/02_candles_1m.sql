-- 02: 1-minute OHLCV candles per symbol into crypto.candles-1m, updated on every trade (EMIT CHANGES);
-- the JDBC sink upserts on (symbol, window_start), taken from the value, so it ends on the final candle.
-- The key is ksqlDB's windowed key; the value repeats symbol and window_start for the sink.
-- Open/close follow offsets, which are trade order: the source writes each symbol in id order.
CREATE TABLE IF NOT EXISTS candles_1m
WITH (KAFKA_TOPIC = 'crypto.candles-1m', KEY_FORMAT = 'KAFKA', VALUE_FORMAT = 'JSON') AS
SELECT
    `symbol` AS `symbol_key`,
    AS_VALUE(`symbol`) AS `symbol`,
    WINDOWSTART AS `window_start`,
    WINDOWEND AS `window_end`,
    EARLIEST_BY_OFFSET(`price`) AS `open`,
    MAX(`price`) AS `high`,
    MIN(`price`) AS `low`,
    LATEST_BY_OFFSET(`price`) AS `close`,
    SUM(`qty`) AS `volume`,
    SUM(`price` * `qty`) AS `quote_volume`,
    COUNT(*) AS `trade_count`,
    CAST(SUM(`price` * `qty`) / SUM(`qty`) AS DECIMAL(28, 8)) AS `vwap`
FROM aggtrades
WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD {{ grace_s }} SECONDS)
GROUP BY `symbol`
EMIT CHANGES;
