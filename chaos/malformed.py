"""Every class of malformed record that once stopped or skewed a consumer or a connector task, as (class, key,
value), and those whose Kafka timestamp is what is wrong, as (class, key, value, timestamp)."""

from __future__ import annotations

import time

YEAR_MS = 365 * 24 * 3600 * 1000
FUTURE_AGG_ID = 2**62


def trade(symbol: str, agg_id: int = 1, price: str = "0.00140000", qty: str = "1.00000000",
          trade_time: int = 1_700_000_000_000) -> bytes:
    return (f'{{"symbol":"{symbol}","agg_id":{agg_id},"price":{price},"qty":{qty},"first_trade_id":1,'
            f'"last_trade_id":1,"trade_time":{trade_time},"is_buyer_maker":true}}').encode()


def records(symbol: str) -> list[tuple[str, bytes | None, bytes | None]]:
    key = symbol.encode()
    now = int(time.time() * 1000)
    return [
        ("not_json", key, b"{nope"),
        ("json_array", key, b"[]"),
        ("price_true", key, trade(symbol, price="true")),
        ("price_overflow", key, trade(symbol, price="1e999999999")),
        ("price_too_big", key, trade(symbol, price="1e25")),
        ("qty_negative", key, trade(symbol, qty="-1")),
        ("time_overflow", key, trade(symbol, trade_time=2**63 + 5)),
        ("id_overflow", key, trade(symbol, agg_id=2**63)),
        ("tombstone", key, None),
        ("key_not_utf8", b"\xff\xfe", trade(symbol)),
        # 100 KB that made Python's json raise RecursionError, which the source's resume let through as "Kafka away".
        ("deep_nesting", key, b"[" * 50_000 + b"]" * 50_000),
        # Near the broker's limit: a price of 900,000 digits.
        ("oversize", key, trade(symbol, price="1" + "0" * 900_000)),
        # Stamped ten years ahead: newest-wins in Redis would have kept its price for ever. Its agg id is the highest
        # of the symbol, so a source resuming after it would skip every real trade.
        ("future_trade_time", key, trade(symbol, agg_id=FUTURE_AGG_ID, trade_time=now + 10 * YEAR_MS)),
    ]


def timestamped(symbol: str) -> list[tuple[str, bytes, bytes, int]]:
    """A good trade value whose Kafka timestamp (the stream job's event time) is 50 minutes ahead: within the
    broker's hour, and once enough to make every trade after it late."""
    return [("future_kafka_timestamp", symbol.encode(), trade(symbol, agg_id=FUTURE_AGG_ID),
             int(time.time() * 1000) + 50 * 60_000)]
