-- Retention of raw trades: delete those older than the retention period before the interval's end.
-- Candles and their rollups keep the history.
DELETE FROM trades WHERE trade_time < %(end)s::timestamptz - make_interval(days => %(days)s)
