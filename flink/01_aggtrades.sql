{% from 'kafka_sink.j2' import login with context %}
-- 01: binance.aggtrades as the source wrote it, key and value as bytes, so no record can fail to deserialize:
-- check_trade (the validation contract of cryptopipe/schemas.py, one JSON parse per record) sorts them.
-- Event time is the Kafka timestamp, which the source sets to the trade time; the grace period is the watermark's
-- delay. A timestamp further ahead of the wall clock than MAX_CLOCK_SKEW_S belongs to a record check_trade refuses
-- (the broker takes them up to an hour ahead), and must not carry the watermark past every real trade after it:
-- its event time is the epoch, which the watermark (the greatest seen) never follows. A second more than the
-- check's bound here, since the two read the clock a moment apart: a record the check refuses may move the
-- watermark by at most the bound, and one the check takes is never put in 1970.
CREATE TABLE aggtrades_raw (
    `k` BYTES,
    `v` BYTES,
    `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp',
    `ts` AS CASE WHEN `kafka_ts` > CURRENT_TIMESTAMP + {{ interval(max_clock_skew_s + 1) }}
                 THEN TO_TIMESTAMP_LTZ(0, 3) ELSE `kafka_ts` END,
    `src_topic` STRING METADATA FROM 'topic' VIRTUAL,
    `src_partition` INT METADATA FROM 'partition' VIRTUAL,
    `src_offset` BIGINT METADATA FROM 'offset' VIRTUAL,
    `proc_time` AS PROCTIME(),
    WATERMARK FOR `ts` AS `ts` - {{ interval(grace_s) }}
) WITH (
    'connector' = 'kafka',
    'topic' = '{{ aggtrades_topic }}',
    {{ login() }},
    'properties.group.id' = '{{ group }}',
    'properties.isolation.level' = 'read_committed',
    'scan.startup.mode' = 'group-offsets',
    'properties.auto.offset.reset' = 'earliest',
    'key.format' = 'raw',
    'key.fields' = 'k',
    'value.format' = 'raw',
    'value.fields-include' = 'EXCEPT_KEY'
);

CREATE VIEW checked AS
SELECT r.`k`, r.`v`, r.`ts`, r.`kafka_ts`, r.`proc_time`, r.`src_topic`, r.`src_partition`, r.`src_offset`,
       c.`symbol`, c.`agg_id`, c.`price`, c.`qty`, c.`error`,
       -- Late: its minute closed before it came (the watermark is past the minute's end), so the closed-window
       -- outputs (5-minute statistics) go on without it.
       CURRENT_WATERMARK(r.`ts`) IS NOT NULL
           AND FLOOR(r.`ts` TO MINUTE) + INTERVAL '1' MINUTE <= CURRENT_WATERMARK(r.`ts`) AS `late`
FROM aggtrades_raw AS r,
     LATERAL TABLE(check_trade(r.`k`, r.`v`, r.`kafka_ts`, CAST({{ max_clock_skew_s * 1000 }} AS BIGINT)))
         AS c(`symbol`, `agg_id`, `price`, `qty`, `error`);

-- Every valid trade, with what the windows need: the minute as epoch ms, and open/close keys (the agg id,
-- zero-padded, then the price) whose MIN and MAX are the first and last trade by id. Late ones too: the running
-- candles take a trade whenever it comes (a backfill of old trades into a topic that already carries live ones
-- is all "late" to a watermark that follows the live ones), only the closed windows leave them out.
CREATE VIEW trades AS
SELECT `symbol`, `price`, `qty`, `ts`, `proc_time`,
       CAST(TIMESTAMPDIFF(MINUTE, TO_TIMESTAMP_LTZ(0, 3), `ts`) AS BIGINT) * 60000 AS `minute_ms`,
       LPAD(CAST(`agg_id` AS STRING), 19, '0') || CAST(`price` AS STRING) AS `id_price`
FROM checked
WHERE `error` IS NULL;
