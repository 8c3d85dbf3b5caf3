-- One indicators row per symbol and minute; re-runs overwrite with the same values.
INSERT INTO indicators_1m (symbol, window_start, close, sma_20, ema_20, rsi_14, volatility_60)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (symbol, window_start) DO UPDATE SET
    close = EXCLUDED.close, sma_20 = EXCLUDED.sma_20, ema_20 = EXCLUDED.ema_20,
    rsi_14 = EXCLUDED.rsi_14, volatility_60 = EXCLUDED.volatility_60
