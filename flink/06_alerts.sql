{% from 'kafka_sink.j2' import exactly_once with context %}
-- 06: alerts into crypto.alerts, keyed by a deterministic id (symbol:rule:window_start), each id written once. Rules, with per-symbol thresholds and defaults from the settings:
--   price_move:   (high - low) / open * 100 >= move threshold, within one 1-minute window
--   volume_spike: the window's quote volume >= volume threshold
CREATE TABLE alerts_out (
    `alert_key` STRING,
    `alert_id` STRING,
    `symbol` STRING,
    `rule` STRING,
    `window_start` BIGINT,
    `value` DECIMAL(38, 8),
    `threshold` DECIMAL(38, 8),
    `price` DECIMAL(18, 8),
    `detected_at` BIGINT
) WITH (
    'connector' = 'kafka',
    'topic' = '{{ alerts_topic }}',
    'key.format' = 'raw',
    'key.fields' = 'alert_key',
    'value.format' = 'json',
    'value.json.encode.decimal-as-plain-number' = 'true',
    'value.fields-include' = 'EXCEPT_KEY',
    {{ exactly_once('alerts') }}
);

-- Checked on every change of a candle (03), in arrival order: an alert goes out with the first trade that breaks
-- its rule, and only that once (deduplicated on the id, first by arrival). Both rules in one pass over the running
-- candles, unnested from one row per candle change (no state): a UNION of two filters would make Flink compute
-- the running candles once more for each.
CREATE VIEW broken_rules AS
SELECT `symbol` || ':' || r.`rule` || ':' || CAST(`minute_ms` AS STRING) AS `id`, `symbol`, r.`rule`, `minute_ms`,
       r.`amount` AS `value`, r.`threshold`, `close`, `proc_time`
FROM candles CROSS JOIN UNNEST(ARRAY[
    ROW('price_move', range_pct(`high`, `low`, `open`), CAST({{ move_case }} AS DECIMAL(38, 8)),
        (`high` - `low`) * 100 >= {{ move_case }} * `open`),
    ROW('volume_spike', CAST(`quote_volume` AS DECIMAL(38, 8)), CAST({{ volume_case }} AS DECIMAL(38, 8)),
        `quote_volume` >= {{ volume_case }})
]) AS r(`rule`, `amount`, `threshold`, `broken`)
WHERE r.`broken`;

INSERT INTO alerts_out
SELECT `id`, `id`, `symbol`, `rule`, `minute_ms`, `value`, `threshold`, `close`, UNIX_TIMESTAMP() * 1000
FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY `id` ORDER BY `proc_time`) AS `nth`
    FROM broken_rules
)
WHERE `nth` = 1;
