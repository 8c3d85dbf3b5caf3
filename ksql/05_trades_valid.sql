-- 05: validated trades into crypto.trades, what the JDBC sink loads into `trades`: the records of
-- binance.aggtrades that the contract in cryptopipe/schemas.py accepts, as the native stream function
-- republishes them. Values that do not deserialize (not JSON, wrong types, more digits than DECIMAL(28, 8))
-- never reach the query (ksqlDB logs them to its processing log); the WHERE clause holds the rest of the
-- contract: key equal to the symbol, positive price and quantity under 10^10, ids and times in range.
CREATE STREAM IF NOT EXISTS trades_valid
WITH (KAFKA_TOPIC = 'crypto.trades', PARTITIONS = 3, KEY_FORMAT = 'KAFKA', VALUE_FORMAT = 'JSON') AS
SELECT
    `symbol_key` AS `symbol_key`,
    `symbol` AS `symbol`,
    `agg_id` AS `agg_id`,
    `price` AS `price`,
    `qty` AS `qty`,
    `first_trade_id` AS `first_trade_id`,
    `last_trade_id` AS `last_trade_id`,
    `trade_time` AS `trade_time`,
    `is_buyer_maker` AS `is_buyer_maker`
FROM aggtrades
WHERE `symbol_key` = `symbol`
    AND REGEXP_EXTRACT('^[A-Z0-9]{2,20}$', `symbol`) IS NOT NULL
    AND `price` > 0 AND `price` < 10000000000
    AND `qty` > 0 AND `qty` < 10000000000
    AND `agg_id` >= 0 AND `first_trade_id` >= 0 AND `last_trade_id` >= `first_trade_id`
    AND `trade_time` BETWEEN 1262304000000 AND 4102444800000
    AND `is_buyer_maker` IS NOT NULL
EMIT CHANGES;
