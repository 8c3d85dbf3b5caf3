"""Unit tests of the source's pieces: validation, the key hash, the weight gate, scheduling. No services."""

from __future__ import annotations

import json
import time

import pytest

from cryptopipe.settings import Settings
from tests.helpers import SECRETS
from functions.binance_source.client import WeightGate
from functions.binance_source.delivery import TopicLimits
from functions.binance_source.resume import murmur2, partition_for
from functions.binance_source.source import BadTrade, BinanceSource, SymbolState, parse_start_time, trade_value
from functions.binance_source.streams import ConnectionBudget

SKEW_MS = 120_000

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
    ({"p": 58001.03}, "field p"), ({"p": "1e25"}, "price"), ({"p": "0.00000000"}, "not positive"),
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


# ---- the validation contract: the source produces only what every consumer accepts ----------------------

def corpus() -> list[object]:
    """Real aggTrades of the tapes, and items breaking each rule of the contract at and beyond its edges."""
    from cryptopipe.schemas import MAX_INT64, MAX_TIME_MS, MIN_TIME_MS
    from replay.tape import load_tapes
    from tests.helpers import TAPES

    items: list[object] = [t for tape in load_tapes(TAPES).values() for t in tape.trades[:300]]
    for k in ("a", "f", "l"):
        items += [GOOD | {k: v} for v in (0, -1, MAX_INT64, MAX_INT64 + 1, 2**64, 1.0, "5", None, False)]
    items += [GOOD | {"T": v} for v in (MIN_TIME_MS - 1, MIN_TIME_MS, MAX_TIME_MS, MAX_TIME_MS + 1, 2**63 + 5, -1, 5)]
    items += [GOOD | {"f": 2, "l": 1}, GOOD | {"f": MAX_INT64, "l": MAX_INT64}]
    numbers = ["0.00000001", "0.000000001", "0.00000000", "0", "-0", "0.0", "1", "-1", "-0.5", "9999999999",
               "9999999999.99999999", "10000000000", "99999999999.5", "1.12345678", "1.123456789", "1.1234567800",
               "1.000000000000", "00.5", "01", ".5", "5.", "1e5", "1E-8", "1e-9", "1e25", "1e999999999",
               "1e-999999999", "2.5e3", "1E+2", "NaN", "Infinity", "-Infinity", "abc", "", "0x10", "1_000",
               "١٢٣", "1١", "5" * 5000, "1.5 ", True, None, 1.5, 2, ["1"]]
    items += [GOOD | {k: v} for k in ("p", "q") for v in numbers]
    items += [GOOD | {"m": v} for v in (False, 0, 1, "true", None)]
    items += [{k: v for k, v in GOOD.items() if k != drop} for drop in ("a", "p", "q", "f", "l", "T", "m")]
    items += [[], "x", None, 5, GOOD | {"extra": "ignored"}]
    return items


def built_value(symbol: str, item: object) -> bytes | None:
    """The value trade_value writes for an item with Binance's field types, built plainly here; None for an
    item of other types, or whose price or quantity text is not one JSON number token (nothing to build)."""
    import re

    if not isinstance(item, dict) or not {"a", "p", "q", "f", "l", "T", "m"} <= item.keys():
        return None
    if not all(isinstance(item[k], str) and re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?", item[k])
               for k in ("p", "q")):
        return None
    m = json.dumps(item["m"])
    return (f'{{"symbol":"{symbol}","agg_id":{json.dumps(item["a"])},"price":{item["p"]},"qty":{item["q"]},'
            f'"first_trade_id":{json.dumps(item["f"])},"last_trade_id":{json.dumps(item["l"])},'
            f'"trade_time":{json.dumps(item["T"])},"is_buyer_maker":{m}}}').encode()


def test_trade_value_accepts_exactly_what_the_contract_accepts():
    from cryptopipe.schemas import Invalid, check_trade

    accepted = refused = 0
    for item in corpus():
        value = built_value("BTCUSDT", item)
        try:
            contract = check_trade(b"BTCUSDT", value, SKEW_MS) if value is not None else None
        except Invalid:
            contract = None
        try:
            agg_id, trade_time, produced = trade_value("BTCUSDT", item)
        except BadTrade as err:
            assert contract is None, (item, str(err))
            assert str(err)
            refused += 1
            continue
        assert contract is not None, item
        assert produced == value and (agg_id, trade_time) == (contract["agg_id"], contract["trade_time"])
        accepted += 1
    assert accepted > 900 and refused > 100
    # A symbol outside the contract never gets into a value, and no text can smuggle fields into it.
    with pytest.raises(BadTrade):
        trade_value("btc-usdt", GOOD)
    with pytest.raises(BadTrade):
        trade_value("BTCUSDT", GOOD | {"p": '1,"agg_id":5'})


# ---- setup and recovery never crash on what the exchange or Kafka does -------------------------------------

class FakeClient:
    """Answers exchangeInfo from a list, one answer per request."""

    def __init__(self, answers: list):
        self.answers = answers

    def get(self, path, params=None, weight=1):
        return self.answers.pop(0)


def test_a_malformed_exchange_info_is_counted_and_asked_again(tmp_path):
    from cryptopipe.retry import retrying
    from functions.binance_source.client import RateLimited, TransientError

    settings = Settings(_env_file=None, **SECRETS, binance_symbols="BTCUSDT", var_dir=tmp_path)
    source = BinanceSource(settings, producer=object())
    source.setup_retry = retrying((TransientError, RateLimited), 0.001, 0.01)
    source.delivery.newest = lambda symbols: {"BTCUSDT": 41}
    weight = {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE"}
    source.client = FakeClient([
        [], "oops", {"symbols": "BTCUSDT"}, {"symbols": [{"status": "TRADING"}]}, {"symbols": [{"symbol": 5}]},
        {"symbols": [{"symbol": "BTCUSDT"}], "rateLimits": "many"},
        {"symbols": [{"symbol": "BTCUSDT"}], "rateLimits": [weight | {"limit": "1200"}]},
        {"symbols": [{"symbol": "BTCUSDT"}], "rateLimits": [None]},
        {"symbols": [{"symbol": "BTCUSDT", "status": "TRADING"}], "rateLimits": [weight | {"limit": 1200}]},
    ])
    source.setup()
    assert source.counters["bad_exchange_info"] == 8
    assert source.gate.limit == 1200 and source.states["BTCUSDT"].cursor == 42


def test_recovery_waits_for_kafka_instead_of_failing(tmp_path, monkeypatch):
    from confluent_kafka import KafkaError, KafkaException

    from cryptopipe.retry import retrying
    from functions.binance_source import delivery

    class Producer:
        def flush(self, _timeout):
            return 0

    calls = []

    def newest_agg_ids(bootstrap, topic, symbols, max_skew_ms):
        calls.append(symbols)
        if len(calls) <= 3:
            raise [KafkaException(KafkaError(KafkaError._TRANSPORT)), TimeoutError("read timed out"),
                   LookupError("no partitions")][len(calls) - 1]
        return {"BTCUSDT": 41}

    monkeypatch.setattr(delivery, "newest_agg_ids", newest_agg_ids)
    monkeypatch.setattr(delivery, "topic_limits", lambda client, topic: delivery.TopicLimits())
    settings = Settings(_env_file=None, **SECRETS, var_dir=tmp_path)
    source = BinanceSource(settings, producer=Producer())
    source.delivery.kafka_retry = retrying(delivery.KAFKA_AWAY, 0.001, 0.01)
    state = SymbolState("BTCUSDT", cursor=10, fetch_from=30, delivery_failed=True)
    source.delivery.recover(state)
    assert len(calls) == 4 and source.counters["kafka_unavailable"] == 3
    assert (state.cursor, state.fetch_from, state.delivery_failed) == (42, 42, False)


def test_connection_budget_keeps_new_connections_under_the_limit_in_any_window():
    budget = ConnectionBudget(limit=3, window_s=300)
    for t in (0.0, 10.0, 20.0):
        assert budget.wait_s(t) == 0
        budget.take(t)
    assert budget.wait_s(30.0) == pytest.approx(270.0)  # the oldest leaves the window at 300
    assert budget.wait_s(299.9) == pytest.approx(0.1)
    assert budget.wait_s(300.0) == 0
    budget.take(300.0)
    assert budget.wait_s(305.0) == pytest.approx(5.0)  # 10, 20 and 300 are in (5, 305]


def test_websocket_mode_is_the_default_and_the_limits_are_binances():
    s = Settings(**SECRETS)
    assert s.binance_source_mode == "websocket"
    for bad in ({"source_ws_streams_per_connection": 1025}, {"source_ws_connections_per_5min": 301},
                {"binance_source_mode": "poll"}, {"binance_ws_url": "http://x"}):
        with pytest.raises(ValueError):
            Settings(**SECRETS, **bad)


def test_a_trade_near_or_past_the_topics_bounds_is_risky():
    """The broker refuses a record more than after.max.ms ahead of its clock or before.max.ms behind it, or larger
    than max.message.bytes; its clock may be the margin away from ours either way."""
    now, margin = 1_800_000_000_000, 120_000
    limits = TopicLimits(after_ms=3_600_000, before_ms=86_400_000, max_bytes=1_048_588)
    assert not limits.risky(now, 300, now, margin)
    assert not limits.risky(now + 3_600_000 - margin, 300, now, margin)  # exactly at the edge of the margin
    assert limits.risky(now + 3_600_000 - margin + 1, 300, now, margin)
    assert limits.risky(now + 3 * 3_600_000, 300, now, margin)
    assert not limits.risky(now - 86_400_000 + margin, 300, now, margin)
    assert limits.risky(now - 86_400_000 + margin - 1, 300, now, margin)
    assert limits.risky(now, 1_048_588, now, margin) and not limits.risky(now, 100_000, now, margin)
    assert not TopicLimits().risky(now + 10**12, 10**9, now, margin)  # no bound read: nothing to fear
