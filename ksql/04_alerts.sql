-- 04: alerts into crypto.alerts, keyed by a deterministic id (symbol:rule:window_start), so every
-- re-emission of a window's alert upserts to one row downstream. A table cannot feed a stream, so a
-- stream is registered over the candles topic (windowed key) and filtered.
-- Rules, with per-symbol thresholds and defaults from the settings (make deploy-ksql fills them in):
--   price_move:   (high - low) / open * 100 >= move threshold, within one 1-minute window
--   volume_spike: the window's quote volume >= volume threshold
CREATE STREAM IF NOT EXISTS candle_changes (
    `symbol_key` VARCHAR KEY,
    `symbol` VARCHAR,
    `window_start` BIGINT,
    `window_end` BIGINT,
    `open` DECIMAL(28, 8),
    `high` DECIMAL(28, 8),
    `low` DECIMAL(28, 8),
    `close` DECIMAL(28, 8),
    `volume` DECIMAL(28, 8),
    `quote_volume` DECIMAL(28, 16),
    `trade_count` BIGINT,
    `vwap` DECIMAL(28, 8)
) WITH (KAFKA_TOPIC = 'crypto.candles-1m', KEY_FORMAT = 'KAFKA', VALUE_FORMAT = 'JSON',
        WINDOW_TYPE = 'TUMBLING', WINDOW_SIZE = '1 MINUTE');

CREATE STREAM IF NOT EXISTS alerts
WITH (KAFKA_TOPIC = 'crypto.alerts', KEY_FORMAT = 'KAFKA', VALUE_FORMAT = 'JSON') AS
SELECT
    CONCAT(`symbol`, ':price_move:', CAST(`window_start` AS STRING)) AS `alert_key`,
    AS_VALUE(CONCAT(`symbol`, ':price_move:', CAST(`window_start` AS STRING))) AS `alert_id`,
    `symbol` AS `symbol`,
    'price_move' AS `rule`,
    `window_start` AS `window_start`,
    CAST((`high` - `low`) / `open` * 100 AS DECIMAL(28, 8)) AS `value`,
    CAST({{ move_case }} AS DECIMAL(28, 8)) AS `threshold`,
    `close` AS `price`,
    UNIX_TIMESTAMP() AS `detected_at`
FROM candle_changes
WHERE (`high` - `low`) / `open` * 100 >= {{ move_case }}
PARTITION BY CONCAT(`symbol`, ':price_move:', CAST(`window_start` AS STRING))
EMIT CHANGES;

INSERT INTO alerts
SELECT
    CONCAT(`symbol`, ':volume_spike:', CAST(`window_start` AS STRING)) AS `alert_key`,
    AS_VALUE(CONCAT(`symbol`, ':volume_spike:', CAST(`window_start` AS STRING))) AS `alert_id`,
    `symbol` AS `symbol`,
    'volume_spike' AS `rule`,
    `window_start` AS `window_start`,
    CAST(`quote_volume` AS DECIMAL(28, 8)) AS `value`,
    CAST({{ volume_case }} AS DECIMAL(28, 8)) AS `threshold`,
    `close` AS `price`,
    UNIX_TIMESTAMP() AS `detected_at`
FROM candle_changes
WHERE `quote_volume` >= {{ volume_case }}
PARTITION BY CONCAT(`symbol`, ':volume_spike:', CAST(`window_start` AS STRING))
EMIT CHANGES;
