-- 04: the same minutes as closed 1-minute windows (event time, closed when the watermark passes their end):
-- what the 5-minute statistics are built from, so a trade updates one window, not five. (Renamed,
-- so the windows over them have window_start to themselves; minute_time stays an event-time attribute.)
CREATE VIEW minutes AS
SELECT `symbol`, `window_start` AS `minute_start`, `window_time` AS `minute_time`,
       MIN(`id_price`) AS `first_id_price`,
       MAX(`id_price`) AS `last_id_price`,
       MAX(`price`) AS `high`,
       MIN(`price`) AS `low`,
       SUM(`qty`) AS `volume`,
       SUM(`price` * `qty`) AS `quote_volume`,
       COUNT(*) AS `trade_count`,
       SUM(`price`) AS `sum_price`,
       SUM(`price` * `price`) AS `sum_squares`
FROM TABLE(TUMBLE(TABLE trades, DESCRIPTOR(`ts`), INTERVAL '1' MINUTE))
GROUP BY `symbol`, `window_start`, `window_end`, `window_time`;
