{% from 'kafka_sink.j2' import exactly_once with context %}
-- 02: every valid trade, late ones included, byte for byte with its key and timestamp into crypto.trades (what
-- the JDBC sink loads); every record that breaks the contract as received into crypto.dlq.stream with the reason in
-- its headers, and a copy of every late trade there too: it is in its candle, but the 5-minute statistics closed
-- without it, and this is where that is counted.
CREATE TABLE trades_valid (
    `k` BYTES,
    `v` BYTES,
    `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp'
) WITH (
    'connector' = 'kafka',
    'topic' = '{{ trades_topic }}',
    'key.format' = 'raw',
    'key.fields' = 'k',
    'value.format' = 'raw',
    'value.fields-include' = 'EXCEPT_KEY',
    {{ exactly_once('trades') }}
);

CREATE TABLE dead_letters (
    `k` BYTES,
    `v` BYTES,
    `headers` MAP<STRING, BYTES> METADATA
) WITH (
    'connector' = 'kafka',
    'topic' = '{{ dlq_topic }}',
    'key.format' = 'raw',
    'key.fields' = 'k',
    'value.format' = 'raw',
    'value.fields-include' = 'EXCEPT_KEY',
    {{ exactly_once('dlq') }}
);

INSERT INTO trades_valid
SELECT `k`, `v`, `kafka_ts` FROM checked WHERE `error` IS NULL;

-- The headers of cryptopipe.topics.dlq_headers: error.reason, error.component, error.topic/partition/offset.
INSERT INTO dead_letters
SELECT `k`, `v`, MAP[
    'error.reason', ENCODE(COALESCE(`error`,
        'late trade: in its candle, but its minute closed (' || '{{ grace_s }}' || ' s of grace) before it came, '
        || 'so the 5-minute statistics do not count it'), 'UTF-8'),
    'error.component', ENCODE('stream', 'UTF-8'),
    'error.topic', ENCODE(`src_topic`, 'UTF-8'),
    'error.partition', ENCODE(CAST(`src_partition` AS STRING), 'UTF-8'),
    'error.offset', ENCODE(CAST(`src_offset` AS STRING), 'UTF-8')]
FROM checked
WHERE `error` IS NOT NULL OR `late`;
