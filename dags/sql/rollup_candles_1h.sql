-- Hourly candles from candles_1m (the query is in rollup_candles.sql).
{% set table, unit = "candles_1h", "hour" %}
{% include "sql/rollup_candles.sql" %}
