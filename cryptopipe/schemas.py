"""The one source of truth for the fields of each topic's JSON value.

The stream function writes exactly these fields, the ksqlDB SELECTs produce exactly these columns, the
JDBC sink connectors type values with the Connect schema made here, and the PostgreSQL tables have these
columns; tests check all four against this module. Decimals are written as JSON numbers with exactly
`scale` decimals; timestamps as epoch milliseconds.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from decimal import Decimal

from cryptopipe import topics


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # string, int64, boolean, decimal, timestamp
    scale: int | None = None
    optional: bool = False


def dec(name: str, scale: int = 8, optional: bool = False) -> Field:
    return Field(name, "decimal", scale, optional)


TRADE = (
    Field("symbol", "string"), Field("agg_id", "int64"), dec("price"), dec("qty"),
    Field("first_trade_id", "int64"), Field("last_trade_id", "int64"), Field("trade_time", "timestamp"),
    Field("is_buyer_maker", "boolean"),
)

CANDLE = (
    Field("symbol", "string"), Field("window_start", "timestamp"), Field("window_end", "timestamp"),
    dec("open"), dec("high"), dec("low"), dec("close"), dec("volume"), dec("quote_volume", 16),
    Field("trade_count", "int64"), dec("vwap"),
)

STATS = (
    Field("symbol", "string"), Field("window_start", "timestamp"), Field("window_end", "timestamp"),
    dec("open"), dec("high"), dec("low"), dec("close"), dec("volume"), Field("trade_count", "int64"),
    dec("range_pct"), dec("volatility_pct"),
)

ALERT = (
    Field("alert_id", "string"), Field("symbol", "string"), Field("rule", "string"),
    Field("window_start", "timestamp"), dec("value"), dec("threshold"), dec("price", optional=True),
    Field("detected_at", "timestamp"),
)

# crypto.trades holds the trades of binance.aggtrades that pass check_trade, as received: the same fields.
BY_TOPIC = {topics.AGGTRADES: TRADE, topics.TRADES: TRADE, topics.CANDLES_1M: CANDLE, topics.STATS_5M: STATS,
            topics.ALERTS: ALERT}
# The name of each topic's Connect schema in the JDBC sink connectors' `value.converter.schema.content`.
CONNECT_NAMES = {topics.AGGTRADES: "crypto.trade", topics.TRADES: "crypto.trade", topics.CANDLES_1M: "crypto.candle",
                 topics.STATS_5M: "crypto.stats", topics.ALERTS: "crypto.alert"}


def names(fields: tuple[Field, ...]) -> list[str]:
    return [f.name for f in fields]


def connect_schema_of(topic: str) -> dict:
    """The Connect schema a JDBC sink connector of `topic` must carry (tests hold connectors/*.json to it)."""
    return connect_schema(BY_TOPIC[topic], CONNECT_NAMES[topic])


def connect_schema(fields: tuple[Field, ...], name: str) -> dict:
    """A Kafka Connect struct schema, for JsonConverter's `schema.content`."""
    out = []
    for f in fields:
        entry: dict = {"field": f.name, "optional": f.optional}
        if f.kind == "decimal":
            entry |= {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                      "parameters": {"scale": str(f.scale)}}
        elif f.kind == "timestamp":
            entry |= {"type": "int64", "name": "org.apache.kafka.connect.data.Timestamp", "version": 1}
        else:
            entry["type"] = f.kind
        out.append(entry)
    return {"type": "struct", "name": name, "optional": False, "fields": out}


_QUANTUM = {scale: Decimal(1).scaleb(-scale) for scale in range(0, 19)}


def to_json(fields: tuple[Field, ...], record: dict) -> bytes:
    """Serialize a record in field order; decimals with exactly their scale, as JSON numbers."""
    parts = []
    for f in fields:
        value = record[f.name]
        if value is None:
            text = "null"
        elif f.kind == "decimal":
            value = value if isinstance(value, Decimal) else Decimal(value)
            text = format(value.quantize(_QUANTUM[f.scale]), "f")
        elif f.kind == "string":
            text = json.dumps(value)
        elif f.kind == "boolean":
            text = "true" if value else "false"
        else:
            text = str(int(value))
        parts.append(f'"{f.name}":{text}')
    return ("{" + ",".join(parts) + "}").encode()


# ---- the validation contract ------------------------------------------------------------------------
# What a valid record of each topic is, for every consumer alike (stream engine, Redis sink, notifier, and
# the stream engine's validated trades, which are all the JDBC sink reads): types; ranges that fit the
# PostgreSQL columns and Flink's DECIMAL(18, 8); no time outside a sane range, and none further ahead of the wall
# clock than MAX_CLOCK_SKEW_S (the exchange stamps trades with its own clock: a trade from the future is a broken
# record or a broken clock, never data); no decimal exponent that could overflow arithmetic; key rules. It is
# total: for any bytes whatsoever, each check returns the record with typed values (Decimal, int, str, bool) or
# raises Invalid with a reason fit for a dead-letter header, never anything else. The Flink job's CheckTrade
# (flink/udf) states the same contract for trades and refuses the same records.

SYMBOL = re.compile(r"\A[A-Z0-9]{2,20}\Z")  # \Z: "$" would let a trailing newline through
RULES = ("price_move", "volume_spike")
MIN_TIME_MS = 1_262_304_000_000  # 2010-01-01T00:00:00Z: before any crypto exchange's first trade
MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
MAX_INT64 = 2**63 - 1
MAX_ID_LENGTH = 200
MINUTE_MS = 60_000
DEFAULT_MAX_CLOCK_SKEW_S = 120  # settings.max_clock_skew_s
# Its largest value: below the broker's own bound (log.message.timestamp.after.max.ms, 1 hour).
MAX_CLOCK_SKEW_LIMIT_S = 1800
# Deeper JSON is refused before it is parsed: CPython's parser recurses once per level (RecursionError past about
# a thousand), Jackson stops at its own limit; one explicit bound makes both refuse exactly the same values.
MAX_DEPTH = 100
# CPython refuses to read an integer of more digits (sys.get_int_max_str_digits); CheckTrade refuses them too.
MAX_INT_DIGITS = 4300


class Invalid(ValueError):
    """A record that breaks the contract; str() is the reason."""


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")  # json accepts NaN and Infinity; JSON (and Jackson) do not


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_no_constant)
# A string runs to its closing quote, or (unterminated) to the end of the value: every match succeeds, so the scan
# stays linear however the quotes and backslashes are laid out.
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def depth(value: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings do not count)."""
    deepest = level = 0
    for byte in _STRINGS.sub(b"", value).translate(None, _NOT_BRACKETS):
        level += 1 if byte in b"[{" else -1
        deepest = max(deepest, level)
    return deepest


def decode(value: bytes | None) -> dict:
    """A record value as a JSON object with decimals kept exact, or Invalid."""
    if value is None:
        raise Invalid("tombstone: no value")
    # Counting brackets costs nothing next to the parse; only a value with many of them is measured.
    if value.count(b"[") + value.count(b"{") > MAX_DEPTH and depth(value) > MAX_DEPTH:
        raise Invalid(f"not JSON: nested deeper than {MAX_DEPTH} levels")
    try:
        record = _DECODER.decode(value.decode("utf-8"))
    except UnicodeDecodeError:
        raise Invalid("value is not UTF-8") from None
    except ValueError as err:  # a JSON error, or an integer of more than MAX_INT_DIGITS digits
        raise Invalid(f"not JSON: {str(err):.200}") from None
    except ArithmeticError:  # a number beyond Decimal's exponents (1e1000000000000000000)
        raise Invalid("not JSON: a number beyond Decimal's exponents") from None
    except RecursionError:  # not reached below MAX_DEPTH; kept so that no input can escape as another error
        raise Invalid(f"not JSON: nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(record, dict):
        raise Invalid(f"not a JSON object but {type(record).__name__}")
    return record


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def utc_text(ms: int) -> str:
    """2026-12-07T09:30:00Z; a time outside 2010-2100 as its number alone."""
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        return "out of range"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def check_not_ahead(name: str, ms: int, max_skew_ms: int, now: int | None = None) -> None:
    """Invalid when `ms` is more than `max_skew_ms` ahead of the wall clock (`now`, epoch ms), naming both times."""
    now = now_ms() if now is None else now
    if ms - now > max_skew_ms:
        raise Invalid(f"{name} {ms} ({utc_text(ms)}) is {(ms - now) // 1000} s ahead of the wall clock {now} "
                      f"({utc_text(now)}); at most MAX_CLOCK_SKEW_S={max_skew_ms // 1000} s is accepted")


def _decimal(record: dict, name: str, int_digits: int, scale: int, positive: bool = True) -> Decimal:
    raw = record.get(name)
    if isinstance(raw, bool) or not isinstance(raw, (int, Decimal)):
        raise Invalid(f"{name} {raw!r:.60} is not a JSON number")
    number = raw if isinstance(raw, Decimal) else Decimal(raw)
    if not number.is_finite():
        raise Invalid(f"{name} is not finite")
    sign, digits, exponent = number.as_tuple()
    # Read from the tuple, never computed: 1e999999999 must not reach any arithmetic.
    if digits != (0,) and len(digits) + exponent > int_digits:
        raise Invalid(f"{name} {raw!s:.40} has more than {int_digits} digits before the point")
    if exponent < -scale and any(digits[exponent + scale:] if exponent + scale < 0 else ()):
        raise Invalid(f"{name} {raw!s:.40} has more than {scale} decimals")
    if positive and (sign or digits == (0,)):
        raise Invalid(f"{name} {raw!s:.40} is not positive")
    return number


def _int(record: dict, name: str, low: int = 0, high: int = MAX_INT64) -> int:
    raw = record.get(name)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise Invalid(f"{name} {raw!r:.60} is not an integer")
    if not low <= raw <= high:
        raise Invalid(f"{name} {raw} is outside {low}..{high}")
    return raw


def _time(record: dict, name: str) -> int:
    return _int(record, name, MIN_TIME_MS, MAX_TIME_MS)


def _symbol(record: dict) -> str:
    symbol = record.get("symbol")
    if not isinstance(symbol, str) or not SYMBOL.match(symbol):
        raise Invalid(f"symbol {symbol!r:.40} is not 2-20 upper-case letters and digits")
    return symbol


def _key_is(key: bytes | None, expected: str, what: str) -> None:
    if key != expected.encode():
        raise Invalid(f"key {key!r:.60} is not the {what} {expected!r}")


def check_trade(key: bytes | None, value: bytes | None, max_skew_ms: int, timestamp_ms: int | None = None,
                now: int | None = None) -> dict:
    """A binance.aggtrades record: keyed by its symbol; ids are int64; price and qty positive decimals of at most
    10 digits before the point and 8 after; trade_time between 2010 and 2100 and at most `max_skew_ms` ahead of the
    wall clock (`now`, epoch ms), and so the record's Kafka timestamp (`timestamp_ms`) where it is given: the
    stream job's event time, which one record from the future would move for every trade after it."""
    record = decode(value)
    trade = {"symbol": _symbol(record), "agg_id": _int(record, "agg_id"),
             "price": _decimal(record, "price", 10, 8), "qty": _decimal(record, "qty", 10, 8),
             "first_trade_id": _int(record, "first_trade_id"), "last_trade_id": _int(record, "last_trade_id"),
             "trade_time": _time(record, "trade_time"), "is_buyer_maker": record.get("is_buyer_maker")}
    if not isinstance(trade["is_buyer_maker"], bool):
        raise Invalid(f"is_buyer_maker {trade['is_buyer_maker']!r:.20} is not a boolean")
    if trade["last_trade_id"] < trade["first_trade_id"]:
        raise Invalid("last_trade_id is before first_trade_id")
    _key_is(key, trade["symbol"], "symbol")
    check_not_ahead("trade_time", trade["trade_time"], max_skew_ms, now)
    if timestamp_ms is not None:
        check_not_ahead("Kafka timestamp", timestamp_ms, max_skew_ms, now)
    return trade


def check_candle(key: bytes | None, value: bytes | None, max_skew_ms: int, now: int | None = None) -> dict:
    """A crypto.candles-1m record: a whole minute, starting at most `max_skew_ms` ahead of the wall clock; prices
    positive, low <= open, close <= high; at least one trade. The key is the symbol, or (ksqlDB's windowed key) the
    symbol followed by 8 bytes of window start."""
    record = decode(value)
    candle = {"symbol": _symbol(record), "window_start": _time(record, "window_start"),
              "window_end": _time(record, "window_end"), "trade_count": _int(record, "trade_count", 1)}
    for name in ("open", "high", "low", "close", "vwap"):
        candle[name] = _decimal(record, name, 10, 8)
    candle["volume"] = _decimal(record, "volume", 10, 8)
    candle["quote_volume"] = _decimal(record, "quote_volume", 20, 16)
    if candle["window_start"] % MINUTE_MS or candle["window_end"] != candle["window_start"] + MINUTE_MS:
        raise Invalid("window is not one whole minute")
    if not candle["low"] <= min(candle["open"], candle["close"]) <= max(candle["open"], candle["close"]) <= candle["high"]:
        raise Invalid("open and close are not between low and high")
    symbol = candle["symbol"].encode()
    if key is not None and key != symbol and not (len(key) == len(symbol) + 8 and key.startswith(symbol)):
        raise Invalid(f"key {key!r:.60} is not the symbol {candle['symbol']!r}")
    check_not_ahead("window_start", candle["window_start"], max_skew_ms, now)
    return candle


def check_alert(key: bytes | None, value: bytes | None, max_skew_ms: int, now: int | None = None) -> dict:
    """A crypto.alerts record: keyed by its alert id; a known rule; value and threshold decimals of at most 20
    digits before the point and 16 after; times between 2010 and 2100, at most `max_skew_ms` ahead of the wall
    clock."""
    record = decode(value)
    alert_id = record.get("alert_id")
    if not isinstance(alert_id, str) or not 0 < len(alert_id) <= MAX_ID_LENGTH or not alert_id.isprintable():
        raise Invalid(f"alert_id {alert_id!r:.60} is not a printable string of 1-{MAX_ID_LENGTH} characters")
    rule = record.get("rule")
    if rule not in RULES:
        raise Invalid(f"rule {rule!r:.40} is not one of {', '.join(RULES)}")
    alert = {"alert_id": alert_id, "symbol": _symbol(record), "rule": rule,
             "window_start": _time(record, "window_start"),
             "value": _decimal(record, "value", 20, 16, positive=False),
             "threshold": _decimal(record, "threshold", 20, 16, positive=False),
             "price": None if record.get("price") is None else _decimal(record, "price", 10, 8),
             "detected_at": _time(record, "detected_at")}
    _key_is(key, alert_id, "alert id")
    check_not_ahead("window_start", alert["window_start"], max_skew_ms, now)
    check_not_ahead("detected_at", alert["detected_at"], max_skew_ms, now)
    return alert
