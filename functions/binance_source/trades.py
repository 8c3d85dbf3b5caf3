"""Binance aggTrades items as the source produces them: checked, and written as the value of
`binance.aggtrades` with Binance's exact digits."""

from __future__ import annotations

import re
from datetime import datetime

DECIMAL = re.compile(r"^\d{1,24}(\.\d{1,24})?$")


class BadTrade(ValueError):
    pass


def trade_value(symbol: str, item: object) -> tuple[int, int, bytes]:
    """(agg_id, trade_time, JSON value) of one aggTrades item, or BadTrade naming what is wrong.

    Prices and quantities are written as JSON numbers with Binance's exact digits, so no float rounding
    happens anywhere on the way to PostgreSQL's numeric columns."""
    if not isinstance(item, dict):
        raise BadTrade(f"item is {type(item).__name__}, not an object")
    missing = [k for k in ("a", "p", "q", "f", "l", "T", "m") if k not in item]
    if missing:
        raise BadTrade(f"missing field(s) {', '.join(missing)}")
    for k in ("a", "f", "l", "T"):
        if not isinstance(item[k], int) or isinstance(item[k], bool) or item[k] < 0:
            raise BadTrade(f"field {k} is {item[k]!r}, not a non-negative integer")
    for k in ("p", "q"):
        if not isinstance(item[k], str) or not DECIMAL.match(item[k]):
            raise BadTrade(f"field {k} is {item[k]!r}, not a decimal string")
    if not isinstance(item["m"], bool):
        raise BadTrade(f"field m is {item['m']!r}, not a boolean")
    if float(item["p"]) <= 0:
        raise BadTrade(f"price {item['p']} is not positive")
    if item["l"] < item["f"]:
        raise BadTrade(f"last trade id {item['l']} is before first trade id {item['f']}")
    value = (
        f'{{"symbol":"{symbol}","agg_id":{item["a"]},"price":{item["p"]},"qty":{item["q"]},'
        f'"first_trade_id":{item["f"]},"last_trade_id":{item["l"]},"trade_time":{item["T"]},'
        f'"is_buyer_maker":{"true" if item["m"] else "false"}}}'
    )
    return item["a"], item["T"], value.encode()


def parse_start_time(text: str) -> int | None:
    if not text:
        return None
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"BINANCE_START_TIME {text!r} needs a timezone, e.g. 2021-04-04T20:03:00Z")
    return int(moment.timestamp() * 1000)
