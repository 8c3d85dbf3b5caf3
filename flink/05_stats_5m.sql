{% from 'kafka_sink.j2' import exactly_once with context %}
-- 05: 5-minute statistics advancing by 1 minute into crypto.stats-5m, one row per window when it closes, merged
-- from its closed minutes: range in % of the open, and price dispersion (population standard deviation over the
-- mean, in %) as the volatility measure, as ksql/03_stats_5m.sql has it.
CREATE TABLE stats_out (
    `symbol_key` STRING,
    `symbol` STRING,
    `window_start` BIGINT,
    `window_end` BIGINT,
    `open` DECIMAL(18, 8),
    `high` DECIMAL(18, 8),
    `low` DECIMAL(18, 8),
    `close` DECIMAL(18, 8),
    `volume` DECIMAL(38, 8),
    `trade_count` BIGINT,
    `range_pct` DECIMAL(38, 8),
    `volatility_pct` DECIMAL(38, 8)
) WITH (
    'connector' = 'kafka',
    'topic' = '{{ stats_topic }}',
    'key.format' = 'raw',
    'key.fields' = 'symbol_key',
    'value.format' = 'json',
    'value.json.encode.decimal-as-plain-number' = 'true',
    'value.fields-include' = 'EXCEPT_KEY',
    {{ exactly_once('stats') }}
);

INSERT INTO stats_out
SELECT `symbol`, `symbol`, `start_ms`, `start_ms` + 300000, `open`, `high`, `low`, `close`, `volume`, `trade_count`,
       range_pct(`high`, `low`, `open`), volatility_pct(`trade_count`, `sum_price`, `sum_squares`)
FROM (
    SELECT `symbol`,
           CAST(TIMESTAMPDIFF(MINUTE, TIMESTAMP '1970-01-01 00:00:00', `window_start`) AS BIGINT) * 60000 AS `start_ms`,
           CAST(SUBSTRING(MIN(`first_id_price`) FROM 20) AS DECIMAL(18, 8)) AS `open`,
           MAX(`high`) AS `high`,
           MIN(`low`) AS `low`,
           CAST(SUBSTRING(MAX(`last_id_price`) FROM 20) AS DECIMAL(18, 8)) AS `close`,
           SUM(`volume`) AS `volume`,
           SUM(`trade_count`) AS `trade_count`,
           SUM(`sum_price`) AS `sum_price`,
           SUM(`sum_squares`) AS `sum_squares`
    FROM TABLE(HOP(TABLE minutes, DESCRIPTOR(`minute_time`), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE))
    GROUP BY `symbol`, `window_start`, `window_end`
);
