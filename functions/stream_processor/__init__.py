"""binance.aggtrades -> 1-minute candles, 5-minute hopping statistics and alerts (the native twin of ksql/)."""
