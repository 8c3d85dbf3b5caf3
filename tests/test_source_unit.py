"""Unit tests of the source's pieces: validation, the key hash, the weight gate, scheduling. No services."""

from __future__ import annotations

import json
import time

import pytest

from cryptopipe.settings import Settings
from tests.helpers import SECRETS
from functions.binance_source.client import WeightGate
from functions.binance_source.resume import murmur2, partition_for
from functions.binance_source.source import BadTrade, BinanceSource, SymbolState, parse_start_time, trade_value

GOOD = {"a": 665076760, "p": "58001.03000000", "q": "0.08620500", "f": 745522877, "l": 745522877,
        "T": 1617566591314, "m": True, "M": True}


def test_trade_value_keeps_exact_decimals():
    agg_id, ts, value = trade_value("BTCUSDT", GOOD)
    assert (agg_id, ts) == (665076760, 1617566591314)
    assert b'"price":58001.03000000' in value and b'"qty":0.08620500' in value
    parsed = json.loads(value, parse_float=str)
    assert parsed == {"symbol": "BTCUSDT", "agg_id": 665076760, "price": "58001.03000000", "qty": "0.08620500",
                      "first_trade_id": 745522877, "last_trade_id": 745522877, "trade_time": 1617566591314,
                      "is_buyer_maker": True}


@pytest.mark.parametrize(("change", "message"), [
    ({"p": 58001.03}, "field p"), ({"p": "1e5"}, "field p"), ({"p": "0.00000000"}, "not positive"),
    ({"q": None}, "field q"), ({"a": "1"}, "field a"), ({"a": True}, "field a"), ({"T": -1}, "field T"),
    ({"m": "true"}, "field m"), ({"l": 1}, "last trade id"),
])
def test_trade_value_rejects_bad_items(change, message):
    with pytest.raises(BadTrade, match=message):
        trade_value("BTCUSDT", GOOD | change)


def test_trade_value_names_missing_fields():
    with pytest.raises(BadTrade, match="missing field"):
        trade_value("BTCUSDT", {k: v for k, v in GOOD.items() if k != "T"})
    with pytest.raises(BadTrade, match="not an object"):
        trade_value("BTCUSDT", [1, 2])


def test_murmur2_matches_kafkas_reference_vectors():
    # The values Kafka's own Utils test checks (as signed 32-bit ints).
    vectors = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
               b"a-little-bit-longer-string": -1486304829,
               b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}
    for data, want in vectors.items():
        got = murmur2(data)
        assert (got - (1 << 32) if got >= 1 << 31 else got) == want, data
    assert 0 <= partition_for("BTCUSDT", 3) < 3


def test_start_time_accepts_ms_and_iso():
    assert parse_start_time("") is None
    assert parse_start_time("1617566591314") == 1617566591314
    assert parse_start_time("2021-04-04T20:03:11.314Z") == 1617566591314
    with pytest.raises(ValueError, match="timezone"):
        parse_start_time("2021-04-04T20:03:11")


def test_gate_waits_for_the_next_window_when_the_budget_is_spent():
    gate = WeightGate(limit=10, share=0.8, window_s=0.5)
    now = time.time()
    gate.record("8", 4, now)
    start = time.monotonic()
    gate.wait_for(4)
    waited = time.monotonic() - start
    assert 0 < waited <= 0.6
    assert int(time.time() // 0.5) != int(now // 0.5)


def test_gate_sends_nothing_while_paused_and_stops_at_once_on_shutdown():
    gate = WeightGate(limit=6000, share=0.8)
    gate.pause(0.4, time.time())
    start = time.monotonic()
    gate.wait_for(4)
    assert time.monotonic() - start >= 0.39
    gate.pause(60, time.time())
    gate.stopping.set()
    start = time.monotonic()
    gate.wait_for(4)
    assert time.monotonic() - start < 0.1


def test_busy_symbols_are_polled_more_often():
    settings = Settings(_env_file=None, **SECRETS, binance_symbols="BUSY,QUIET", source_min_poll_interval_s=0.01)
    source = BinanceSource(settings, producer=object())
    source.states = {"BUSY": SymbolState("BUSY", rate=50.0), "QUIET": SymbolState("QUIET", rate=0.01)}
    busy, quiet = source.interval(source.states["BUSY"]), source.interval(source.states["QUIET"])
    assert busy < quiet <= settings.source_max_poll_interval_s
    # The intervals never spend more than the budget: polls/s * weight * window <= budget.
    polls_per_s = 1 / busy + 1 / quiet
    assert polls_per_s * 4 * source.gate.window_s <= source.gate.budget * 1.001
