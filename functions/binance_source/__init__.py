"""Binance aggTrades REST -> Kafka `binance.aggtrades`, every trade once, in order per symbol."""
