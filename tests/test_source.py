"""The Binance source against the replay server and the real broker: every trade exactly once, in id order
per symbol, through restarts, rate limits and bad answers."""

from __future__ import annotations

import base64
import json
import random
import time

import requests
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from chaos.malformed import records, timestamped, trade
from functions.binance_source.resume import newest_agg_ids
from functions.binance_source.schedule import SymbolState
from functions.binance_source.source import BinanceSource
from functions.binance_source.trades import trade_value

from .helpers import (SHORT_TAPES, XRP_TAPE, assert_exactly_the_tapes, create_topics, delete_topics, read_topic,
                      tape, topic_size, wait_for)


def test_every_trade_once_in_order_and_unknown_symbols_reported(settings, stack, harness):
    harness.serve(SHORT_TAPES)
    proc = harness.start("BTCUSDT,ETHUSDT,NOPEUSDT,DOTUSDT")
    harness.wait_complete()
    assert proc.stop() == 0
    assert_exactly_the_tapes(settings, harness.topic, harness.expected)
    log = proc.output()
    assert log.count("symbol NOPEUSDT is not listed") == 1
    status = harness.status()
    assert {s: v["produced"] for s, v in status["symbols"].items()} == {
        s: len(t) for s, t in harness.expected.items()}
    assert status["counters"]["trades_produced"] == harness.total()


def test_kill_9_at_random_points_then_resume_without_gap_or_duplicate(settings, stack, harness):
    harness.serve(XRP_TAPE)
    # 10 ms per answer and 50 trades a page: the tape takes ~3 s, so the kills land mid-stream.
    harness.fault({"kind": "slow", "delay_s": 0.01, "count": 10**6})
    points = sorted(random.Random().sample(range(500, harness.total() - 2000), 2))
    sizes = []
    for point in points:
        proc = harness.start("XRPETH", binance_page_limit=50)
        wait_for(lambda: topic_size(settings, harness.topic) >= point, 120, f"{point} trades", interval=0.02)
        proc.kill9()
        sizes.append(topic_size(settings, harness.topic))
    assert sizes[-1] < harness.total(), f"the kills came too late to test anything: {points}, {sizes}"
    proc = harness.start("XRPETH", binance_page_limit=50)
    harness.wait_complete()
    assert proc.stop() == 0
    assert "resuming after agg id" in proc.output(), f"kill points {points}"
    assert_exactly_the_tapes(settings, harness.topic, harness.expected)


def test_weight_limit_is_never_crossed(settings, stack, harness):
    # A 60-weight limit in 3-second windows: the source learns it from exchangeInfo and must pace itself.
    harness.serve(SHORT_TAPES, weight_limit=60, window_s=3)
    proc = harness.start("BTCUSDT,ETHUSDT,DOTUSDT", binance_page_limit=100, binance_weight_window_s=3)
    harness.wait_complete(timeout=180)
    assert proc.stop() == 0
    stats = requests.get(f"{harness.url}/_replay/stats", timeout=5).json()
    assert stats["count_429"] == 0 and stats["count_418"] == 0
    assert stats["max_used_weight"] <= 60
    windows: dict[int, int] = {}
    weights = {"/api/v3/exchangeInfo": 20, "/api/v3/aggTrades": 4}
    for t, path, _status, _sym in stats["log"]:
        windows[int(t // 3)] = windows.get(int(t // 3), 0) + weights[path]
    assert max(windows.values()) <= 60 and len(windows) >= 3, windows
    assert_exactly_the_tapes(settings, harness.topic, harness.expected)


def test_429_and_418_stop_all_requests_until_retry_after(settings, stack, harness):
    harness.serve(SHORT_TAPES)
    harness.fault({"kind": "429", "retry_after_s": 2}, {"kind": "418", "retry_after_s": 3})
    proc = harness.start("BTCUSDT,ETHUSDT,DOTUSDT", binance_page_limit=200)
    harness.wait_complete()
    assert proc.stop() == 0
    log = requests.get(f"{harness.url}/_replay/stats", timeout=5).json()["log"]
    refusals = [(t, status) for t, _, status, _ in log if status in (429, 418)]
    assert [s for _, s in refusals] == [429, 418]
    for t, status in refusals:
        wait = 2 if status == 429 else 3
        early = [r for r in log if t < r[0] < t + wait - 0.05]
        assert early == [], f"requests sent within Retry-After of a {status}: {early}"
    assert_exactly_the_tapes(settings, harness.topic, harness.expected)


def test_bad_answers_never_stop_it_and_the_stream_ends_complete(settings, stack, harness):
    harness.serve(SHORT_TAPES)
    faults = [
        {"kind": "503", "symbol": "BTCUSDT"}, {"kind": "502", "symbol": "ETHUSDT"},
        {"kind": "timeout", "symbol": "BTCUSDT", "delay_s": 3}, {"kind": "malformed", "symbol": "BTCUSDT"},
        {"kind": "wrong_type", "symbol": "ETHUSDT"}, {"kind": "bad_items", "symbol": "BTCUSDT"},
        {"kind": "bad_items", "symbol": "ETHUSDT", "variant": "missing_time"},
        {"kind": "bad_items", "symbol": "BTCUSDT", "variant": "string_id"},
        {"kind": "hole", "symbol": "BTCUSDT"}, {"kind": "backwards", "symbol": "ETHUSDT"},
        {"kind": "slow", "symbol": "DOTUSDT", "delay_s": 0.5},
    ]
    harness.fault(*faults)
    proc = harness.start("BTCUSDT,ETHUSDT,DOTUSDT,NOPEUSDT", binance_page_limit=100, binance_read_timeout_s=1)
    harness.wait_complete()
    wait_for(lambda: harness.status()["counters"].get("holes"), 10, "the status file")
    assert proc.stop() == 0
    assert_exactly_the_tapes(settings, harness.topic, harness.expected)
    counters = harness.status()["counters"]
    assert counters["bad_items"] == 3 and counters["holes"] >= 1 and counters["ids_backwards"] >= 3
    assert counters["transient_errors"] >= 5  # 503, 502, timeout, malformed body, wrong type
    dead = read_topic(settings, harness.dlq)
    reasons = [dict(m.headers())["error.reason"].decode() for m in dead]
    assert any("field p" in r for r in reasons) and any("missing field(s) T" in r for r in reasons)
    assert any("field a is '" in r for r in reasons)
    assert any(r == "non-JSON body" for r in reasons) and any("not a JSON list" in r for r in reasons)
    assert all(m.key() in (b"BTCUSDT", b"ETHUSDT") for m in dead)


def test_resume_skips_records_that_break_the_contract(settings, stack, unique):
    """A malformed record someone else wrote after the newest trade (an agg id of 2^63, not JSON, a list, a trade
    from the future with the highest agg id) is no place to resume from: resuming after it would skip every trade
    up to it (found by the chaos run); and JSON nested 50,000 deep once raised RecursionError here, which the
    source took for "Kafka away" and waited on for as long as the record stayed among the newest."""
    topic, symbol = f"test.resume-{unique}", f"RS{unique[:8].upper()}"
    create_topics(settings, topic)
    # The source's partitioner (Kafka's murmur2), so every record lands where the source looks for the symbol.
    producer = Producer({**settings.kafka_config(), "partitioner": "murmur2_random"})
    for agg_id in (7, 8, 9):
        producer.produce(topic, key=symbol.encode(), value=trade(symbol, agg_id=agg_id))
    for _, key, value in records(symbol):
        producer.produce(topic, key=key, value=value)
    for _, key, value, timestamp in timestamped(symbol):
        producer.produce(topic, key=key, value=value, timestamp=timestamp)
    assert producer.flush(10) == 0
    try:
        assert newest_agg_ids(settings.kafka_config(), topic, [symbol], settings.max_clock_skew_ms) == {symbol: 9}
    finally:
        delete_topics(settings, topic)


def with_topic_config(settings, topic: str, **config: str) -> None:
    admin = AdminClient(settings.kafka_config())
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()])
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result()


def test_a_trade_the_broker_refuses_is_dead_lettered_and_every_other_trade_flows(settings, stack, harness, tmp_path):
    """The broker refuses a record whose timestamp is too far ahead (INVALID_TIMESTAMP), and with it the whole
    produce batch of its partition. Here the topic takes at most one minute ahead and the source (MAX_CLOCK_SKEW_S
    300) lets a trade three minutes ahead through, as against a broker whose clock is behind: that one trade goes
    to the source's dead-letter topic with the broker's error, every other trade reaches the topic once and in
    order (the ones refused with it in its batch included), and the source runs on."""
    now = int(time.time() * 1000)
    trades = [t | {"T": now - 30 * 60_000 + i * 1000} for i, t in enumerate(tape(SHORT_TAPES["BTCUSDT"])[:600])]
    bad = 250
    trades[bad]["T"] = now + 3 * 60_000
    folder = tmp_path / "tape"
    folder.mkdir()
    (folder / "btcusdt_aggtrades_now.json").write_text(json.dumps(trades))
    with_topic_config(settings, harness.topic, message_timestamp_after_max_ms="60000")
    harness.serve({})  # the tape written above
    harness.expected = {"BTCUSDT": trades[:bad] + trades[bad + 1:]}
    proc = harness.start("BTCUSDT", max_clock_skew_s=300, binance_page_limit=100)
    wait_for(lambda: topic_size(settings, harness.topic) >= len(trades) - 1 and read_topic(settings, harness.dlq, 1),
             120, "every other trade in the topic and one dead letter")
    time.sleep(2)  # nothing more may come
    assert proc.proc.poll() is None, "the source stopped"
    assert proc.stop() == 0
    try:
        assert_exactly_the_tapes(settings, harness.topic, harness.expected)
    except AssertionError:
        print(proc.output())  # what the source logged about the refused batch and its resends
        raise
    [dead] = read_topic(settings, harness.dlq)
    assert json.loads(dead.value())["agg_id"] == trades[bad]["a"] and dead.key() == b"BTCUSDT"
    reason = dict(dead.headers())["error.reason"].decode()
    assert reason.startswith("refused by Kafka: INVALID_TIMESTAMP") and str(trades[bad]["a"]) in reason, reason
    counters = harness.status()["counters"]
    assert counters["refused_by_kafka"] == 1 and counters["trades_produced"] == len(trades) - 1


def test_a_trade_past_the_topics_timestamp_bound_goes_alone_and_nothing_behind_it_overtakes(settings, stack, unique):
    """One produce call of 300 trades, the 121st three minutes ahead of a topic that takes one minute ahead. After
    a refused batch librdkafka sends the partition's later batches under a new epoch, ahead of the refused trades'
    resends; so the source reads the topic's bounds and sends a trade near or past them alone, with nothing queued
    behind it. Here the topic ends with the 120 trades before it, in order, whatever the timing; the refused trade
    reaches the dead-letter topic and the fetch position is right after it (the rest is fetched again)."""
    topic, prefix = f"test.ahead-{unique}", f"test.{unique}.dlq."
    create_topics(settings, topic, partitions=1)
    create_topics(settings, prefix + "source", partitions=1)
    with_topic_config(settings, topic, message_timestamp_after_max_ms="60000")
    s = settings.model_copy(update={"aggtrades_topic": topic, "dlq_topic_prefix": prefix, "kafka_as_admin": True,
                                    "max_clock_skew_s": 300})
    source = BinanceSource(s)
    try:
        assert source.delivery.newest(["BTCUSDT"]) == {}  # an empty topic; its limits are read with it
        assert source.delivery.limits.after_ms == 60_000
        state = source.states["BTCUSDT"] = SymbolState("BTCUSDT", cursor=0, fetch_from=0)
        now = int(time.time() * 1000)
        trades = [t | {"T": now - 30 * 60_000 + i * 1000} for i, t in enumerate(tape(SHORT_TAPES["BTCUSDT"])[:300])]
        trades[120]["T"] = now + 3 * 60_000
        source.delivery.produce(state, [trade_value("BTCUSDT", t, s.max_clock_skew_ms) for t in trades])
        assert source.producer.flush(30) == 0
        assert state.delivery_failed and [r[0] for r in state.refused] == [trades[120]["a"]]
        source.delivery.recover(state)
        assert [json.loads(m.value())["agg_id"] for m in read_topic(settings, topic)] == [t["a"] for t in trades[:120]]
        [dead] = read_topic(settings, prefix + "source")
        assert json.loads(dead.value())["agg_id"] == trades[120]["a"]
        assert dict(dead.headers())["error.reason"].decode().startswith("refused by Kafka: INVALID_TIMESTAMP")
        assert (state.cursor, state.fetch_from) == (trades[120]["a"] + 1,) * 2
        assert source.counters["sent_alone"] == 1 and source.counters["refused_by_kafka"] == 1
    finally:
        source.producer.flush(10)
        delete_topics(settings, topic, prefix + "source")


def test_a_record_too_large_for_the_topic_is_dead_lettered_and_the_cursor_moves_on(settings, stack, unique):
    """RECORD_TOO_LARGE, the other refusal of a record itself: a topic whose max.message.bytes was lowered below
    one trade (padded with an incompressible field here; no trade the source builds is that large) and below a
    full produce batch. The source's delivery sends each failed trade again alone: the padded one goes to the
    dead-letter topic with the broker's error, the others to the topic, and the cursor passes them all."""
    topic, prefix = f"test.refused-{unique}", f"test.{unique}.dlq."
    create_topics(settings, topic, partitions=1)
    create_topics(settings, prefix + "source", partitions=1)
    with_topic_config(settings, topic, max_message_bytes="2000")
    s = settings.model_copy(update={"aggtrades_topic": topic, "dlq_topic_prefix": prefix, "kafka_as_admin": True})
    source = BinanceSource(s)
    try:
        state = source.states["BTCUSDT"] = SymbolState("BTCUSDT", cursor=0, fetch_from=0)
        values = [trade_value("BTCUSDT", t) for t in tape(SHORT_TAPES["BTCUSDT"])[:300]]
        big = 120
        agg_id, ts, value = values[big]
        values[big] = (agg_id, ts, value[:-1] + b',"pad":"' + base64.b64encode(random.randbytes(3000)) + b'"}')
        source.delivery.produce(state, values)
        assert source.producer.flush(30) == 0
        assert state.delivery_failed and state.refused
        source.delivery.recover(state)
        assert (state.cursor, state.fetch_from, state.delivery_failed) == (values[-1][0] + 1,) * 2 + (False,)
        got = [json.loads(m.value())["agg_id"] for m in read_topic(settings, topic)]
        assert sorted(got) == sorted(v[0] for i, v in enumerate(values) if i != big) and len(set(got)) == len(got)
        [dead] = read_topic(settings, prefix + "source")
        assert dead.value() == values[big][2]
        assert dict(dead.headers())["error.reason"].decode().startswith("refused by Kafka: MSG_SIZE_TOO_LARGE")
        assert source.counters["refused_by_kafka"] == 1
    finally:
        source.producer.flush(10)
        delete_topics(settings, topic, prefix + "source")
