-- 03: 5-minute statistics advancing by 1 minute into crypto.stats-5m, one row per closed window
-- (EMIT FINAL): range in % of the open, and price dispersion (population standard deviation over the
-- mean, in %) as the volatility measure, since ksqlDB has no LAG for log returns.
CREATE TABLE IF NOT EXISTS stats_5m
WITH (KAFKA_TOPIC = 'crypto.stats-5m', KEY_FORMAT = 'KAFKA', VALUE_FORMAT = 'JSON') AS
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
    COUNT(*) AS `trade_count`,
    CAST((MAX(`price`) - MIN(`price`)) / EARLIEST_BY_OFFSET(`price`) * 100 AS DECIMAL(28, 8)) AS `range_pct`,
    CAST(100 * SQRT(GREATEST(0.0,
        SUM(CAST(`price` AS DOUBLE) * CAST(`price` AS DOUBLE)) / COUNT(*)
        - (SUM(CAST(`price` AS DOUBLE)) / COUNT(*)) * (SUM(CAST(`price` AS DOUBLE)) / COUNT(*))))
        / (SUM(CAST(`price` AS DOUBLE)) / COUNT(*)) AS DECIMAL(28, 8)) AS `volatility_pct`
FROM aggtrades
WINDOW HOPPING (SIZE 5 MINUTES, ADVANCE BY 1 MINUTE, GRACE PERIOD {{ grace_s }} SECONDS)
GROUP BY `symbol`
EMIT FINAL;
