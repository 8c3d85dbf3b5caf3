{% from 'kafka_sink.j2' import exactly_once with context %}
-- 03: 1-minute OHLCV candles per symbol into crypto.candles-1m as they change. Each trade updates the running
-- candle of its minute (an OVER aggregate in arrival order: no waiting for the watermark); the sink keeps the
-- newest version of each candle for a second and commits them per checkpoint. The JDBC sink upserts on (symbol,
-- window_start), taken from the value, so it ends on the final candle. The Kafka key is ksqlDB's windowed key:
-- symbol + 8-byte window start.
CREATE VIEW running_candles AS
SELECT `symbol`, `minute_ms`, `proc_time`,
       MIN(`id_price`) OVER w AS `first_id_price`,
       MAX(`id_price`) OVER w AS `last_id_price`,
       MAX(`price`) OVER w AS `high`,
       MIN(`price`) OVER w AS `low`,
       SUM(`qty`) OVER w AS `volume`,
       SUM(`price` * `qty`) OVER w AS `quote_volume`,
       COUNT(*) OVER w AS `trade_count`
FROM trades
WINDOW w AS (PARTITION BY `symbol`, `minute_ms` ORDER BY `proc_time` ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);

CREATE VIEW candles AS
SELECT `symbol`, `minute_ms`, `proc_time`, `high`, `low`, `volume`, `quote_volume`, `trade_count`,
       CAST(SUBSTRING(`first_id_price` FROM 20) AS DECIMAL(18, 8)) AS `open`,
       CAST(SUBSTRING(`last_id_price` FROM 20) AS DECIMAL(18, 8)) AS `close`
FROM running_candles;

CREATE TABLE candles_out (
    `candle_key` BYTES NOT NULL,
    `symbol` STRING,
    `window_start` BIGINT,
    `window_end` BIGINT,
    `open` DECIMAL(18, 8),
    `high` DECIMAL(18, 8),
    `low` DECIMAL(18, 8),
    `close` DECIMAL(18, 8),
    `volume` DECIMAL(38, 8),
    `quote_volume` DECIMAL(38, 16),
    `trade_count` BIGINT,
    `vwap` DECIMAL(18, 8),
    PRIMARY KEY (`candle_key`) NOT ENFORCED
) WITH (
    'connector' = 'upsert-kafka',
    'topic' = '{{ candles_topic }}',
    'key.format' = 'raw',
    'value.format' = 'json',
    'value.json.encode.decimal-as-plain-number' = 'true',
    'value.fields-include' = 'EXCEPT_KEY',
    'sink.buffer-flush.max-rows' = '10000',
    'sink.buffer-flush.interval' = '1 s',
    {{ exactly_once('candles') }}
);

INSERT INTO candles_out
SELECT windowed_key(`symbol`, `minute_ms`), `symbol`, `minute_ms`, `minute_ms` + 60000, `open`, `high`, `low`,
       `close`, `volume`, `quote_volume`, `trade_count`, vwap(`quote_volume`, `volume`, `close`)
FROM candles;
