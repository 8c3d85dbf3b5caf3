"""The validation contract (cryptopipe/schemas.py): every real trade of the tapes passes; every malformed class
that once crashed a consumer or failed a connector task is refused with a reason. No services needed."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from cryptopipe import schemas
from cryptopipe.schemas import Invalid, check_alert, check_candle, check_trade
from replay.tape import load_tapes

from .helpers import TAPES

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
            trade = check_trade(symbol.encode(), value)
            assert trade["price"] == Decimal(t["p"]) and trade["agg_id"] == t["a"]
            checked += 1
    assert checked == sum(len(t.trades) for t in tapes.values()) > 10_000


def test_good_records_pass_with_typed_values():
    trade = check_trade(b"BTCUSDT", raw(GOOD_TRADE))
    assert trade["price"] == Decimal("58000.01") and type(trade["agg_id"]) is int and trade["is_buyer_maker"] is True
    candle = check_candle(b"BTCUSDT", raw(GOOD_CANDLE))
    assert candle["trade_count"] == 12 and candle["quote_volume"] == Decimal(87000)
    # ksqlDB's windowed key: the symbol, then 8 bytes of window start.
    assert check_candle(b"BTCUSDT" + (1617580800000).to_bytes(8, "big"), raw(GOOD_CANDLE))["symbol"] == "BTCUSDT"
    alert = check_alert(GOOD_ALERT["alert_id"].encode(), raw(GOOD_ALERT))
    assert alert["value"] == Decimal("1.52") and alert["detected_at"] == 1617580830000
    assert check_alert(GOOD_ALERT["alert_id"].encode(), raw(GOOD_ALERT, price=None))["price"] is None


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
        check_trade(key, value)
    assert str(err.value)


@pytest.mark.parametrize("change", [
    {"open": None}, {"trade_count": 0}, {"window_start": 1617580800001}, {"window_end": 1617580920000},
    {"high": "57000.00000000"}, {"vwap": "1e999999999"}, {"window_start": 2**63 + 5}, {"volume": "-1"},
])
def test_malformed_candles_are_refused(change):
    with pytest.raises(Invalid):
        check_candle(b"BTCUSDT", raw(GOOD_CANDLE, **change))


@pytest.mark.parametrize("change", [
    {"value": "1e999999999"}, {"threshold": "-1e999999999"}, {"window_start": 10**20}, {"window_start": -5},
    {"rule": "drop_tables"}, {"alert_id": ""}, {"alert_id": "x" * 201}, {"detected_at": None}, {"price": "0"},
])
def test_malformed_alerts_are_refused(change):
    with pytest.raises(Invalid):
        check_alert(GOOD_ALERT["alert_id"].encode(), raw(GOOD_ALERT, **change))
    assert schemas.RULES == ("price_move", "volume_spike")
