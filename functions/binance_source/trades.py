"""Binance aggTrades items as the source produces them: checked, and written as the value of
`binance.aggtrades` with Binance's exact digits."""

from __future__ import annotations

import re
from datetime import datetime

import time

from cryptopipe.schemas import (DEFAULT_MAX_CLOCK_SKEW_S, MAX_INT64, MAX_TIME_MS, MIN_TIME_MS, SYMBOL, Invalid,
                                check_not_ahead, check_trade)

# What Binance sends and the validation contract accepts, read from the text alone (no Decimal, no JSON
# parse per trade): a JSON number of at most 10 digits before the point and at most 8 decimals that are not
# zero. Other JSON numbers ("1e5", "-1", 11 digits) are decided by the contract itself, on the value built.
PLAIN = re.compile(r"(?:0|[1-9][0-9]{0,9})(?:\.[0-9]{1,8}0*)?\Z")
NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")  # one JSON number token
FIELDS_IN_ORDER = ("a", "p", "q", "f", "l", "T", "m")
FIELDS = frozenset(FIELDS_IN_ORDER)
RANGES = {"a": (0, MAX_INT64), "f": (0, MAX_INT64), "l": (0, MAX_INT64), "T": (MIN_TIME_MS, MAX_TIME_MS)}
_valid_symbols: set[str] = set()


class BadTrade(ValueError):
    pass


def trade_value(symbol: str, item: object,
                max_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_S * 1000) -> tuple[int, int, bytes]:
    """(agg_id, trade_time, JSON value) of one aggTrades item, or BadTrade naming what is wrong. It accepts
    exactly the items whose value the validation contract (`schemas.check_trade` with `max_skew_ms`) accepts: the
    trade time is also the record's Kafka timestamp, which the broker refuses more than an hour ahead.

    Prices and quantities are written as JSON numbers with Binance's exact digits, so no float rounding
    happens anywhere on the way to PostgreSQL's numeric columns."""
    if not isinstance(item, dict):
        raise BadTrade(f"item is {type(item).__name__}, not an object")
    if not FIELDS <= item.keys():
        raise BadTrade(f"missing field(s) {', '.join(k for k in FIELDS_IN_ORDER if k not in item)}")
    for k, (low, high) in RANGES.items():
        v = item[k]
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            raise BadTrade(f"field {k} is {v!r:.40}, not an integer in {low}..{high}")
    exact = True  # the fast checks settle it; else the contract decides on the value built
    for k in ("p", "q"):
        v = item[k]
        if not isinstance(v, str):
            raise BadTrade(f"field {k} is {v!r:.40}, not a decimal string")
        if not PLAIN.match(v):  # the common case needs one match, not two
            if not NUMBER.match(v):
                raise BadTrade(f"field {k} is {v!r:.40}, not a decimal string")
            exact = False
        elif not v.strip("0."):
            raise BadTrade(f"{'price' if k == 'p' else 'quantity'} {v} is not positive")
    if not isinstance(item["m"], bool):
        raise BadTrade(f"field m is {item['m']!r:.20}, not a boolean")
    if item["l"] < item["f"]:
        raise BadTrade(f"last trade id {item['l']} is before first trade id {item['f']}")
    if item["T"] - time.time() * 1000 > max_skew_ms:
        try:
            check_not_ahead("trade_time", item["T"], max_skew_ms)
        except Invalid as err:
            raise BadTrade(str(err)) from None
    if symbol not in _valid_symbols:
        if not SYMBOL.match(symbol):
            raise BadTrade(f"symbol {symbol!r:.40} is not 2-20 upper-case letters and digits")
        _valid_symbols.add(symbol)
    value = (
        f'{{"symbol":"{symbol}","agg_id":{item["a"]},"price":{item["p"]},"qty":{item["q"]},'
        f'"first_trade_id":{item["f"]},"last_trade_id":{item["l"]},"trade_time":{item["T"]},'
        f'"is_buyer_maker":{"true" if item["m"] else "false"}}}'
    ).encode()
    if not exact:
        try:
            check_trade(symbol.encode(), value, max_skew_ms)
        except Invalid as err:
            raise BadTrade(str(err)) from None
    return item["a"], item["T"], value


def parse_start_time(text: str) -> int | None:
    if not text:
        return None
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"BINANCE_START_TIME {text!r} needs a timezone, e.g. 2021-04-04T20:03:00Z")
    return int(moment.timestamp() * 1000)
