"""Every class of malformed record that once stopped a consumer or a connector task, as (class, key, value)."""

from __future__ import annotations


def trade(symbol: str, agg_id: int = 1, price: str = "0.00140000", qty: str = "1.00000000",
          trade_time: int = 1_700_000_000_000) -> bytes:
    return (f'{{"symbol":"{symbol}","agg_id":{agg_id},"price":{price},"qty":{qty},"first_trade_id":1,'
            f'"last_trade_id":1,"trade_time":{trade_time},"is_buyer_maker":true}}').encode()


def records(symbol: str) -> list[tuple[str, bytes | None, bytes | None]]:
    key = symbol.encode()
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
    ]
