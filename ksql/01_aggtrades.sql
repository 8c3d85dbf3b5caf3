-- 01: the source stream over binance.aggtrades (JSON values from the Binance source, key = symbol).
-- No TIMESTAMP property: the source already sets each record's Kafka timestamp to the trade time, so
-- ROWTIME is event time and every window below is in event time.
-- Identifiers are in backticks so the JSON field names stay lower case, as the sinks expect.
CREATE STREAM IF NOT EXISTS aggtrades (
    `symbol_key` VARCHAR KEY,
    `symbol` VARCHAR,
    `agg_id` BIGINT,
    `price` DECIMAL(28, 8),
    `qty` DECIMAL(28, 8),
    `first_trade_id` BIGINT,
    `last_trade_id` BIGINT,
    `trade_time` BIGINT,
    `is_buyer_maker` BOOLEAN
) WITH (KAFKA_TOPIC = 'binance.aggtrades', KEY_FORMAT = 'KAFKA', VALUE_FORMAT = 'JSON');
