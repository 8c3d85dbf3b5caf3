"""The validation contract (cryptopipe/schemas.py): every real trade of the tapes passes; every malformed class
that once crashed a consumer or failed a connector task is refused with a reason, by Python's contract and by the
stream job's Java one alike. No services needed (the Java check runs in a JVM of its own)."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from cryptopipe import schemas
from cryptopipe.schemas import Invalid, check_alert, check_candle, check_trade
from replay.tape import load_tapes

from .helpers import TAPES
from .java_contract import JavaContract, python_verdict

SKEW_MS = schemas.DEFAULT_MAX_CLOCK_SKEW_S * 1000
NOW = 1_780_000_000_000  # a fixed wall clock, 2026-05-28T20:26:40Z, for the checks of time

GOOD_TRADE = {"symbol": "BTCUSDT", "agg_id": 1, "price": Decimal("58000.01000000"), "qty": Decimal("0.00100000"),
              "first_trade_id": 10, "last_trade_id": 12, "trade_time": 1617580800000, "is_buyer_maker": True}
GOOD_CANDLE = {"symbol": "BTCUSDT", "window_start": 1617580800000, "window_end": 1617580860000,
               "open": "58000.00000000", "high": "58100.00000000", "low": "57900.00000000", "close": "58050.00000000",
               "volume": "1.50000000", "quote_volume": "87000.0000000000000000", "trade_count": 12,
               "vwap": "58000.00000000"}
GOOD_ALERT = {"alert_id": "BTCUSDT:price_move:1617580800000", "symbol": "BTCUSDT", "rule": "price_move",
              "window_start": 1617580800000, "value": "1.52000000", "threshold": "1.00000000",
              "price": "58000.00000000", "detected_at": 1617580830000}


def raw(record: dict, **changes) -> bytes:
    """A JSON value as a producer would write it, with `changes` applied (a value of ... deletes the field)."""
    out = {k: v for k, v in {**record, **changes}.items() if v is not ...}
    text = json.dumps(out, default=str)
    for name, value in out.items():  # decimals as JSON numbers, not strings
        if isinstance(value, (Decimal, str)) and name not in ("symbol", "alert_id", "rule"):
            text = text.replace(f'"{name}": "{value}"', f'"{name}": {value}')
    return text.encode()


def test_every_real_trade_of_the_tapes_passes():
    tapes = load_tapes(TAPES)
    checked = 0
    for symbol, tape in tapes.items():
        for t in tape.trades:
            value = (f'{{"symbol":"{symbol}","agg_id":{t["a"]},"price":{t["p"]},"qty":{t["q"]},'
                     f'"first_trade_id":{t["f"]},"last_trade_id":{t["l"]},"trade_time":{t["T"]},'
                     f'"is_buyer_maker":{"true" if t["m"] else "false"}}}').encode()
            trade = check_trade(symbol.encode(), value, SKEW_MS)
            assert trade["price"] == Decimal(t["p"]) and trade["agg_id"] == t["a"]
            checked += 1
    assert checked == sum(len(t.trades) for t in tapes.values()) > 10_000


def test_good_records_pass_with_typed_values():
    trade = check_trade(b"BTCUSDT", raw(GOOD_TRADE), SKEW_MS)
    assert trade["price"] == Decimal("58000.01") and type(trade["agg_id"]) is int and trade["is_buyer_maker"] is True
    candle = check_candle(b"BTCUSDT", raw(GOOD_CANDLE), SKEW_MS)
    assert candle["trade_count"] == 12 and candle["quote_volume"] == Decimal(87000)
    # ksqlDB's windowed key: the symbol, then 8 bytes of window start.
    windowed_key = b"BTCUSDT" + (1617580800000).to_bytes(8, "big")
    assert check_candle(windowed_key, raw(GOOD_CANDLE), SKEW_MS)["symbol"] == "BTCUSDT"
    alert = check_alert(GOOD_ALERT["alert_id"].encode(), raw(GOOD_ALERT), SKEW_MS)
    assert alert["value"] == Decimal("1.52") and alert["detected_at"] == 1617580830000
    assert check_alert(GOOD_ALERT["alert_id"].encode(), raw(GOOD_ALERT, price=None), SKEW_MS)["price"] is None


TRADE_KEY = b"BTCUSDT"
BAD_TRADES = {
    "not JSON": (TRADE_KEY, b"{nope"),
    "a list": (TRADE_KEY, b"[]"),
    "a tombstone": (TRADE_KEY, None),
    "not UTF-8": (TRADE_KEY, b'{"symbol": "\xff"}'),
    "price true": (TRADE_KEY, raw(GOOD_TRADE, price=True)),
    "price a string": (TRADE_KEY, raw(GOOD_TRADE).replace(b'"price": 58000.01000000', b'"price": "58000"')),
    "price 1e999999999": (TRADE_KEY, raw(GOOD_TRADE, price=Decimal("1e999999999"))),
    "price 1e25": (TRADE_KEY, raw(GOOD_TRADE, price=Decimal("1e25"))),
    "price zero": (TRADE_KEY, raw(GOOD_TRADE, price=Decimal("0"))),
    "price NaN": (TRADE_KEY, raw(GOOD_TRADE).replace(b"58000.01000000", b"NaN")),
    "price with 9 decimals": (TRADE_KEY, raw(GOOD_TRADE, price=Decimal("1.123456789"))),
    "qty -1": (TRADE_KEY, raw(GOOD_TRADE, qty=-1)),
    "qty zero": (TRADE_KEY, raw(GOOD_TRADE, qty=0)),
    "qty 1e-999999999": (TRADE_KEY, raw(GOOD_TRADE, qty=Decimal("1e-999999999"))),
    "agg_id 2^63": (TRADE_KEY, raw(GOOD_TRADE, agg_id=2**63)),
    "agg_id negative": (TRADE_KEY, raw(GOOD_TRADE, agg_id=-1)),
    "agg_id a float": (TRADE_KEY, raw(GOOD_TRADE, agg_id=Decimal("1.5"))),
    "trade_time 2^63+5": (TRADE_KEY, raw(GOOD_TRADE, trade_time=2**63 + 5)),
    "trade_time in 1970": (TRADE_KEY, raw(GOOD_TRADE, trade_time=5)),
    "trade_time in 2200": (TRADE_KEY, raw(GOOD_TRADE, trade_time=7_258_118_400_000)),
    "symbol missing": (TRADE_KEY, raw(GOOD_TRADE, symbol=...)),
    "symbol with Slack markup": (b"<!channel>", raw(GOOD_TRADE, symbol="<!channel>")),
    "is_buyer_maker 1": (TRADE_KEY, raw(GOOD_TRADE, is_buyer_maker=1)),
    "last before first": (TRADE_KEY, raw(GOOD_TRADE, first_trade_id=12, last_trade_id=10)),
    "key not UTF-8": (b"\xff\xfe", raw(GOOD_TRADE)),
    "key another symbol": (b"ETHUSDT", raw(GOOD_TRADE)),
    "no key": (None, raw(GOOD_TRADE)),
}


@pytest.mark.parametrize("case", sorted(BAD_TRADES))
def test_malformed_trades_are_refused_with_a_reason(case):
    key, value = BAD_TRADES[case]
    with pytest.raises(Invalid) as err:
        check_trade(key, value, SKEW_MS)
    assert str(err.value)


@pytest.mark.parametrize("change", [
    {"open": None}, {"trade_count": 0}, {"window_start": 1617580800001}, {"window_end": 1617580920000},
    {"high": "57000.00000000"}, {"vwap": "1e999999999"}, {"window_start": 2**63 + 5}, {"volume": "-1"},
])
def test_malformed_candles_are_refused(change):
    with pytest.raises(Invalid):
        check_candle(b"BTCUSDT", raw(GOOD_CANDLE, **change), SKEW_MS)


@pytest.mark.parametrize("change", [
    {"value": "1e999999999"}, {"threshold": "-1e999999999"}, {"window_start": 10**20}, {"window_start": -5},
    {"rule": "drop_tables"}, {"alert_id": ""}, {"alert_id": "x" * 201}, {"detected_at": None}, {"price": "0"},
])
def test_malformed_alerts_are_refused(change):
    with pytest.raises(Invalid):
        check_alert(GOOD_ALERT["alert_id"].encode(), raw(GOOD_ALERT, **change), SKEW_MS)
    assert schemas.RULES == ("price_move", "volume_spike")


@pytest.fixture(scope="module")
def java():
    contract = JavaContract()
    yield contract
    contract.close()


TEN_YEARS_MS = 3650 * 24 * 3600 * 1000
# The classes of #23, each with the reason both contracts give: (value, Kafka timestamp, reason).
NEW_CLASSES = {
    # 100 KB that made Python's json raise RecursionError (the source's resume took it for "Kafka away").
    "deep nesting": (b"[" * 50_000 + b"]" * 50_000, None, "not JSON: nested deeper than 100 levels"),
    # Near the broker's limit: a price of a million digits.
    "a megabyte": (raw(GOOD_TRADE).replace(b"58000.01000000", b"1" + b"0" * 999_999), None,
                   "not JSON: Exceeds the limit (4300 digits) for integer string conversion: value has 1000000 digits; "
                   "use sys.set_int_max_str_digits() to increase the limit"),
    "trade_time ten years ahead": (
        raw(GOOD_TRADE, trade_time=NOW + TEN_YEARS_MS), NOW,
        f"trade_time {NOW + TEN_YEARS_MS} (2036-05-25T20:26:40Z) is 315360000 s ahead of the wall clock {NOW} "
        "(2026-05-28T20:26:40Z); at most MAX_CLOCK_SKEW_S=120 s is accepted"),
    # The broker takes up to an hour ahead; the Flink job's event time would have jumped with it.
    "Kafka timestamp 50 minutes ahead": (
        raw(GOOD_TRADE, trade_time=NOW - 1_000), NOW + 50 * 60_000,
        f"Kafka timestamp {NOW + 3_000_000} (2026-05-28T21:16:40Z) is 3000 s ahead of the wall clock {NOW} "
        "(2026-05-28T20:26:40Z); at most MAX_CLOCK_SKEW_S=120 s is accepted"),
    "NaN in an extra field": (raw(GOOD_TRADE)[:-1] + b', "extra": [1, NaN]}', None,
                              "not JSON: NaN is not a JSON value"),
    "a UTF-8 BOM": (b"\xef\xbb\xbf" + raw(GOOD_TRADE), None, "not JSON: Expecting value: line 1 column 1 (char 0)"),
}


@pytest.mark.parametrize("case", sorted(NEW_CLASSES))
def test_each_new_class_is_refused_with_the_same_reason_by_python_and_java(java, case):
    value, timestamp, reason = NEW_CLASSES[case]
    with pytest.raises(Invalid) as err:
        check_trade(b"BTCUSDT", value, SKEW_MS, timestamp, NOW)
    assert str(err.value) == reason
    assert java.check(b"BTCUSDT", value, SKEW_MS, timestamp, NOW) == ("INVALID", reason)


def test_a_megabyte_of_padding_and_a_trade_at_the_skew_bound_pass_both(java):
    padded = raw(GOOD_TRADE)[:-1] + b', "pad": "' + b"x" * 1_000_000 + b'"}'
    at_bound = raw(GOOD_TRADE, trade_time=NOW + SKEW_MS)
    for value, timestamp in ((padded, None), (at_bound, NOW + SKEW_MS)):
        trade = check_trade(b"BTCUSDT", value, SKEW_MS, timestamp, NOW)
        assert java.check(b"BTCUSDT", value, SKEW_MS, timestamp, NOW) == python_verdict(trade)


def test_a_number_beyond_the_exponents_of_decimal_is_refused_not_raised(java):
    # Python's Decimal raises InvalidOperation (not a ValueError) past an adjusted exponent of 10**18 - 1.
    for number in (b"1e1000000000000000000", b"1e-9999999999999999999", b"0.5e-1999999999999999997"):
        value = raw(GOOD_TRADE)[:-1] + b', "extra": ' + number + b"}"
        with pytest.raises(Invalid):
            check_trade(b"BTCUSDT", value, SKEW_MS, None, NOW)
        assert java.check(b"BTCUSDT", value, SKEW_MS, None, NOW)[0] == "INVALID"


def test_the_depth_of_a_value_is_measured_in_linear_time(java):
    # 101 brackets, then a string that never closes, of escaped quotes: a regex that tries a string at every quote
    # reads the rest of the value once per quote.
    value = b"[" * 101 + b'"' + b'\\"' * 20_000
    started = time.monotonic()
    with pytest.raises(Invalid, match="nested deeper than 100 levels"):
        check_trade(b"BTCUSDT", value, SKEW_MS, None, NOW)
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    big = b"[" * 101 + b'"' + b'\\"' * 500_000
    assert java.check(b"BTCUSDT", big, SKEW_MS, None, NOW) == ("INVALID", "not JSON: nested deeper than 100 levels")
    assert time.monotonic() - started < 1
