"""The stream job (flink/*.sql on the stack's Flink cluster) on the real broker, against independent oracles:
Binance's own recorded XRPETH candles, and candles, statistics and alerts computed plainly in this file from the
tapes."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from collections import defaultdict
from decimal import Decimal

import pytest
from confluent_kafka import Producer

from chaos import malformed
from chaos.faults import worker_of
from cryptopipe import schemas
from functions.binance_source.trades import trade_value
from ops import flink_deploy
from replay.server import start_in_thread
from replay.state import Replay
from replay.tape import load_tapes
from replay.ws import start_ws_in_thread

from .helpers import (
    TAPES,
    Process,
    create_topics,
    delete_topics,
    latest_by_key,
    plain_candles,
    read_topic,
    start_flink_job,
    tape,
    topic_size,
    wait_for,
)

MIN = 60_000


def plain_stats(trades: list[dict], start: int) -> dict:
    ts = [t for t in trades if start <= t["T"] < start + 5 * MIN]
    prices = [Decimal(t["p"]) for t in ts]
    n = Decimal(len(prices))
    mean = sum(prices) / n
    var = max(Decimal(0), sum(p * p for p in prices) / n - mean * mean)
    return {"open": prices[0], "high": max(prices), "low": min(prices), "close": prices[-1],
            "trade_count": len(ts), "range_pct": ((max(prices) - min(prices)) / prices[0] * 100).quantize(Decimal("1e-8")),
            "volatility_pct": (var.sqrt() / mean * 100).quantize(Decimal("1e-8"))}


@pytest.fixture
def pipeline(settings, stack, unique, tmp_path):
    """Fresh topics; the real source feeding them, and the stream job of flink/*.sql on the stack's Flink cluster
    under a job name, consumer group and topics of its own."""

    class Pipeline:
        trades = f"test.trades-{unique}"
        candles, stats, alerts, valid = (f"test.{n}-{unique}" for n in ("candles", "stats", "alerts", "valid"))
        dlq_prefix = f"test.{unique}.dlq."
        dlq = dlq_prefix + "stream"
        group = f"test-stream-{unique}"

        def feed(self, tapes: list[str], websocket: bool = False) -> dict[str, list[dict]]:
            """The tapes through the replay server and the real source into the trades topic: over REST as fast
            as it goes, or (websocket) streamed live with the tapes' span squeezed into ~20 s."""
            folder = tmp_path / "tape"
            folder.mkdir(exist_ok=True)
            expected = {}
            for name in tapes:
                shutil.copy(TAPES / name, folder)
                expected[name.split("_")[0].upper()] = tape(name)
            span_s = max((t[-1]["T"] - t[0]["T"]) / 1000 for t in expected.values())
            replay = Replay(load_tapes(folder), speed=span_s / 20 if websocket else 0)
            server, url = start_in_thread(replay)
            ws, ws_url = start_ws_in_thread(replay) if websocket else (None, "ws://127.0.0.1:9")
            source = Process("functions.binance_source", {
                "BINANCE_BASE_URL": url, "BINANCE_WS_URL": ws_url, "BINANCE_SYMBOLS": ",".join(expected),
                "BINANCE_START_TIME": "0", "BINANCE_SOURCE_MODE": "websocket" if websocket else "rest",
                "AGGTRADES_TOPIC": self.trades, "VAR_DIR": str(tmp_path / "srcvar")}, tmp_path / "source.log")
            total = sum(len(v) for v in expected.values())
            wait_for(lambda: topic_size(settings, self.trades) >= total, 120, f"{total} trades")
            assert source.stop() == 0
            server.shutdown()
            if ws is not None:
                ws.stop()
                counters = json.loads((tmp_path / "srcvar" / "run" / "source.json").read_text())["counters"]
                assert counters["stream_trades"] > total / 2, counters  # most came over the streams
            return expected

        def start(self, **env) -> None:
            """Start the job (from its newest checkpoint, if it has one) and wait until its tasks run."""
            self.s = start_flink_job(settings, f"test-stream-{unique}", aggtrades_topic=self.trades,
                                     trades_topic=self.valid, candles_topic=self.candles, stats_topic=self.stats,
                                     alerts_topic=self.alerts, dlq_topic_prefix=self.dlq_prefix,
                                     stream_consumer_group=self.group, var_dir=tmp_path / "var", **env)

        def stop(self) -> None:
            flink_deploy.cancel(self.s)
            wait_for(lambda: flink_deploy.running_job(self.s) is None, 60, "the job to be cancelled")

        def wait_done(self, valid_trades: int, timeout: float = 180) -> None:
            """Every valid trade is out in the committed validated trades: the checkpoint that committed them
            committed the candles, statistics and alerts of the same input. Then two checkpoints more."""
            wait_for(lambda: len(read_topic(settings, self.valid, 5)) >= valid_trades, timeout,
                     f"{valid_trades} validated trades", 1)
            time.sleep(3 * settings.flink_checkpoint_interval_s)

    p = Pipeline()
    create_topics(settings, p.trades, p.valid, p.candles, p.stats, p.alerts, partitions=3)
    create_topics(settings, p.dlq, partitions=1)
    yield p
    if hasattr(p, "s"):
        flink_deploy.cancel(p.s)
    delete_topics(settings, p.trades, p.valid, p.candles, p.stats, p.alerts, p.dlq)


def assert_candles_equal(final: dict, symbol: str, expected: dict[int, dict]) -> None:
    got = {ws: v for (sym, ws), v in final.items() if sym == symbol}
    assert sorted(got) == sorted(expected), f"{symbol}: candle minutes differ"
    for start, want in expected.items():
        c = got[start]
        assert c["window_end"] == start + MIN
        for field in ("open", "high", "low", "close", "volume", "quote_volume", "trade_count", "vwap"):
            assert c[field] == want[field], (symbol, start, field, c[field], want[field])


def test_xrpeth_candles_equal_binances_recorded_candles(settings, stack, pipeline):
    # Streamed over WebSocket, as the source runs live; the short tapes below come over REST.
    trades = pipeline.feed(["xrpeth_aggtrades_20191011-13.json"], websocket=True)["XRPETH"]
    pipeline.start()
    pipeline.wait_done(len(trades))
    pipeline.stop()
    msgs = read_topic(settings, pipeline.candles)
    assert all(list(json.loads(m.value())) == schemas.names(schemas.CANDLE) for m in msgs)
    final = latest_by_key(msgs, ("symbol", "window_start"))

    recorded = {c[0]: c for c in tape("xrpeth_candles_1m_20191011-13.json") if c[5] > 0}
    assert len(recorded) == 2469 and len(final) == 2469  # no candle for a minute without trades
    for (symbol, start), c in final.items():
        _, o, h, low, close, v = recorded[start]
        assert (c["open"], c["high"], c["low"], c["close"]) == tuple(Decimal(repr(x)) for x in (o, h, low, close))
        assert abs(c["volume"] - Decimal(repr(v))) <= Decimal("1e-8")
    assert_candles_equal(final, "XRPETH", plain_candles(trades))

    # 5-minute statistics advancing by a minute, emitted when each window closes.
    stats = latest_by_key(read_topic(settings, pipeline.stats), ("symbol", "window_start"))
    assert len(stats) > 1000
    for (symbol, start), s in random.Random(7).sample(sorted(stats.items()), 200):
        want = plain_stats(trades, start)
        assert s["window_end"] == start + 5 * MIN
        for field, value in want.items():
            assert s[field] == value, (start, field, s[field], value)


def test_short_tapes_candles_alerts_and_their_ids(settings, stack, pipeline):
    tapes = pipeline.feed(["btcusdt_aggtrades_20210404.json", "ethusdt_aggtrades_20210404.json",
                           "dotusdt_aggtrades_20210404.json"])
    # Thresholds low enough that these 91 seconds raise alerts, one symbol with its own.
    rules = {"alert_move_pct": 0.05, "alert_move_pct_symbols": "DOTUSDT:0.2", "alert_quote_volume": 2_000_000.0}
    pipeline.start(**rules)
    pipeline.wait_done(sum(len(t) for t in tapes.values()))
    pipeline.stop()
    final = latest_by_key(read_topic(settings, pipeline.candles), ("symbol", "window_start"))
    expected_alerts = set()
    for symbol, trades in tapes.items():
        candles = plain_candles(trades)
        assert_candles_equal(final, symbol, candles)
        move_limit = Decimal("0.2") if symbol == "DOTUSDT" else Decimal("0.05")
        for start, c in candles.items():
            if (c["high"] - c["low"]) / c["open"] * 100 >= move_limit:
                expected_alerts.add(f"{symbol}:price_move:{start}")
            if c["quote_volume"] >= 2_000_000:
                expected_alerts.add(f"{symbol}:volume_spike:{start}")
    alerts = read_topic(settings, pipeline.alerts)
    ids = [json.loads(m.value())["alert_id"] for m in alerts]
    assert expected_alerts, "the thresholds should raise alerts on these tapes"
    assert sorted(ids) == sorted(expected_alerts)  # each once
    for m in alerts:
        value = json.loads(m.value())
        assert list(value) == schemas.names(schemas.ALERT) and m.key().decode() == value["alert_id"]


def test_out_of_order_late_and_bad_records(settings, stack, pipeline):
    trades = tape("btcusdt_aggtrades_20210404.json")
    first_minute = [t for t in trades if t["T"] // MIN == trades[0]["T"] // MIN]
    shuffled = first_minute[:]
    random.Random(3).shuffle(shuffled)  # out of order, all within the same minute (inside any grace)
    later = [t for t in trades if t["T"] // MIN > trades[0]["T"] // MIN]
    producer = Producer({**settings.kafka_config(), "partitioner": "murmur2_random"})

    def send(t, ts=None):
        value = (f'{{"symbol":"BTCUSDT","agg_id":{t["a"]},"price":{t["p"]},"qty":{t["q"]},"first_trade_id":{t["f"]},'
                 f'"last_trade_id":{t["l"]},"trade_time":{t["T"]},"is_buyer_maker":{str(t["m"]).lower()}}}')
        producer.produce(pipeline.trades, key=b"BTCUSDT", value=value.encode(), timestamp=ts or t["T"])

    # The job runs first, and its empty partitions have gone idle: the watermark follows the trades as they come.
    pipeline.start()
    time.sleep(pipeline.s.flink_idle_timeout_s + 2)
    for t in shuffled + later:
        send(t)
    # A trade 2 minutes past the tape closes the first window for good; then a trade for it is too late.
    beyond = dict(later[-1], a=later[-1]["a"] + 10, T=later[-1]["T"] + 2 * MIN)
    send(beyond)
    assert producer.flush(10) == 0
    time.sleep(3)  # the watermark moves past the first minute
    too_late = dict(first_minute[0], a=first_minute[0]["a"] - 1, p="1.00000000")
    send(too_late)
    for bad in (b"{not json", b'{"symbol":"BTCUSDT","agg_id":1}',
                b'{"symbol":"BTCUSDT","agg_id":2,"price":1.0,"qty":-5.0,"trade_time":1617566591314}'):
        producer.produce(pipeline.trades, key=b"BTCUSDT", value=bad, timestamp=trades[-1]["T"])
    assert producer.flush(10) == 0

    pipeline.wait_done(len(trades) + 2)
    pipeline.stop()
    final = latest_by_key(read_topic(settings, pipeline.candles), ("symbol", "window_start"))
    # Candles take every valid trade whenever it comes, the too-late one included (a backfill into a live topic is
    # all late); the 5-minute statistics, closed by the watermark, do not count it.
    expected = plain_candles(trades + [too_late]) | plain_candles([beyond])
    assert_candles_equal(final, "BTCUSDT", expected)
    first_stats = [json.loads(m.value()) for m in read_topic(settings, pipeline.stats)
                   if json.loads(m.value())["window_start"] <= too_late["T"] < json.loads(m.value())["window_end"]]
    assert first_stats and all(s["low"] != 1 for s in first_stats)  # its price of 1.0 is in no statistic
    dead = read_topic(settings, pipeline.dlq)
    reasons = sorted(dict(m.headers())["error.reason"].decode() for m in dead)
    assert len(reasons) == 4
    # The late trade is counted: a copy in the dead-letter topic as it came, with why.
    [late] = [m for m in dead if dict(m.headers())["error.reason"].startswith(b"late trade")]
    assert json.loads(late.value())["agg_id"] == too_late["a"]
    bad = [r for r in reasons if not r.startswith("late trade")]
    assert bad[0].startswith("not JSON") and bad[1] == "price None is not a JSON number"
    assert bad[2] == "qty -5.0 is not positive"
    assert all(dict(m.headers())["error.component"] == b"stream" for m in dead)
    # Every valid trade, the too-late one included, goes on to the validated trades as it came.
    valid = read_topic(settings, pipeline.valid)
    assert sorted(json.loads(m.value())["agg_id"] for m in valid) == sorted(
        [t["a"] for t in trades] + [beyond["a"], too_late["a"]])


def kill_flink(stack) -> None:
    """kill -9 the JobManager and the TaskManager; their supervisors start them again."""
    for name in ("flink-jobmanager", "flink-taskmanager"):
        svc = stack.service(name)
        target = worker_of(svc.pid(), svc.marker)
        assert target is not None and target != svc.pid(), f"{name} is not running under its supervisor"
        os.kill(target, signal.SIGKILL)
    for name in ("flink-jobmanager", "flink-taskmanager"):
        svc = stack.service(name)
        wait_for(svc.is_up, 120, f"{name} back")


def test_kill_9_mid_tape_keeps_candles_exact_and_alerts_unique(settings, stack, pipeline):
    # Streamed over WebSocket, as the source runs live; the short tapes below come over REST.
    trades = pipeline.feed(["xrpeth_aggtrades_20191011-13.json"], websocket=True)["XRPETH"]
    env = {"alert_move_pct": 0.4}
    for point in sorted(random.Random().sample(range(200, 2000), 2)):
        pipeline.start(**env)
        wait_for(lambda: topic_size(settings, pipeline.candles) >= point, 120, f"{point} candle updates", 0.02)
        kill_flink(stack)
    # As the stack's keeper does: the job is not running, so it starts from its newest checkpoint.
    pipeline.start(**env)
    pipeline.wait_done(len(trades))
    pipeline.stop()
    msgs = read_topic(settings, pipeline.candles)
    # Exactly-once: each committed update of a window holds more trades than the one before it. An update
    # written again after a kill (what at-least-once leaves, and this catches it) would repeat a count.
    counts = defaultdict(list)
    for m in msgs:
        c = json.loads(m.value())
        counts[(c["symbol"], c["window_start"])].append(c["trade_count"])
    assert all(all(a < b for a, b in zip(c, c[1:])) for c in counts.values())
    assert_candles_equal(latest_by_key(msgs, ("symbol", "window_start")), "XRPETH", plain_candles(trades))
    ids = [json.loads(m.value())["alert_id"] for m in read_topic(settings, pipeline.alerts)]
    assert ids and len(ids) == len(set(ids))


def test_a_kafka_timestamp_from_the_future_moves_no_event_time(settings, stack, pipeline):
    """A good trade whose Kafka timestamp is 50 minutes ahead (the broker takes up to an hour) once carried the
    job's watermark past every real trade after it: each was judged late, copied to the dead letters and left out
    of the statistics. Now it is refused as a record from the future, and the 2.5 days of XRPETH trades after it
    are all on time: no late copy, candles and every closed 5-minute statistic exact."""
    trades = tape("xrpeth_aggtrades_20191011-13.json")
    producer = Producer({**settings.kafka_config(), "partitioner": "murmur2_random", "linger.ms": 20})
    [(_, key, future, timestamp)] = malformed.timestamped("XRPETH")
    producer.produce(pipeline.trades, key=key, value=future, timestamp=timestamp)
    assert producer.flush(30) == 0
    pipeline.start()
    # The job has read it (its dead letter is out) and emitted watermarks since; only then come the trades.
    wait_for(lambda: read_topic(settings, pipeline.dlq, 2), 60, "the future record's dead letter", 0.5)
    time.sleep(2)
    for t in trades:
        _, ts, value = trade_value("XRPETH", t)
        producer.produce(pipeline.trades, key=b"XRPETH", value=value, timestamp=ts)
        producer.poll(0)
    assert producer.flush(30) == 0
    pipeline.wait_done(len(trades))
    pipeline.stop()
    [dead] = read_topic(settings, pipeline.dlq)  # the future record, and not one late copy
    assert dead.value() == future
    reason = dict(dead.headers())["error.reason"].decode()
    assert reason.startswith(f"Kafka timestamp {timestamp} (") and "ahead of the wall clock" in reason, reason
    final = latest_by_key(read_topic(settings, pipeline.candles), ("symbol", "window_start"))
    assert_candles_equal(final, "XRPETH", plain_candles(trades))
    stats = latest_by_key(read_topic(settings, pipeline.stats), ("symbol", "window_start"))
    # Every 5-minute window with a trade that the last trade's watermark closed, and each exact.
    last = trades[-1]["T"] - settings.stream_grace_s * 1000
    closed = {start for t in trades for start in range(t["T"] // MIN * MIN - 4 * MIN, t["T"] // MIN * MIN + MIN, MIN)
              if start + 5 * MIN <= last}
    assert {start for _, start in stats} == closed
    for (_, start), s in stats.items():
        for field, value in plain_stats(trades, start).items():
            assert s[field] == value, (start, field, s[field], value)
