-- Consistency: candles recomputed from trades equal candles_1m for the interval.
SELECT count(*) = 0 FROM (
{% include 'sql/candles_vs_trades.sql' %}
) differences
