"""Kafka trades and candles -> the latest prices and candles in Redis."""
