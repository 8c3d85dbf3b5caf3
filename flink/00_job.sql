-- 00: the job's settings. Every INSERT of flink/*.sql runs in one statement set: one job, one read of
-- binance.aggtrades, named so `make deploy-flink` finds it running instead of starting it twice.
SET 'pipeline.name' = '{{ job_name }}';
SET 'table.local-time-zone' = 'UTC';
-- One subtask per partition of binance.aggtrades at most (a source subtask reads whole partitions).
SET 'parallelism.default' = '{{ parallelism }}';
-- The SQL operators copy what they keep; handing records on without a defensive copy is ~10% faster here.
SET 'pipeline.object-reuse' = 'true';
-- A partition with nothing to read (or read to its end before a restore) would hold the watermark back for ever:
-- after this long without records it stops counting.
SET 'table.exec.source.idle-timeout' = '{{ idle_timeout_s }} s';
-- No mini-batch: its assigner sends processing-time watermarks down the job, and CURRENT_WATERMARK (which tells late
-- trades) would read those. The candle sink's buffer writes each candle once per flush instead.
-- The running candles of minutes long closed are dropped after an hour without a trade.
SET 'table.exec.state.ttl' = '1 h';
-- The candle's Kafka key is made from (symbol, window start), the grouping key: one writer per key already.
SET 'table.exec.sink.upsert-materialize' = 'NONE';
CREATE TEMPORARY FUNCTION check_trade AS 'cryptopipe.flink.CheckTrade';
CREATE TEMPORARY FUNCTION windowed_key AS 'cryptopipe.flink.WindowedKey';
CREATE TEMPORARY FUNCTION vwap AS 'cryptopipe.flink.Vwap';
CREATE TEMPORARY FUNCTION range_pct AS 'cryptopipe.flink.RangePct';
CREATE TEMPORARY FUNCTION volatility_pct AS 'cryptopipe.flink.VolatilityPct';
