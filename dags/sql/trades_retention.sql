-- Retention of raw trades: delete those older than `days` days before the interval's end; candles and their
-- rollups keep the history. The crypto_retention role may not touch the table itself, only call this
-- function, which refuses days outside 1..3650 and never reaches past now(); it returns the rows deleted.
SELECT delete_old_trades(%(end)s::timestamptz, %(days)s::integer) AS deleted_trades
