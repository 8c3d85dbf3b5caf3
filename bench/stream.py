"""Benchmark of the stream function against a bare consumer reading the same topic in the same run.

Two markets made of real trades, because the function's cost has two parts: a part per trade (parse,
one window update) and a part per symbol-minute (a candle written, a closed minute, a 5-minute
statistic). The quiet one, the figure the issue's target is for, is the XRPETH tape under 16 symbols:
about 5 trades per symbol-minute, as when catching up on history of quiet pairs. The busy one is the
BTCUSDT tape played back to back 10 times under 16 symbols: about 800 trades per symbol-minute, as on
a major pair.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from quixstreams import Application

from bench.common import TAPES, fresh_topic, produce_all, record
from cryptopipe.settings import get_settings
from functions.binance_source.trades import trade_value
from functions.stream_processor.app import StreamFunction

WARMUP = 0.1  # both clocks start after the first 10% of the trades, once fetching has settled
SYMBOLS = 16


def quiet_trades() -> list[tuple]:
    trades = json.loads((TAPES / "xrpeth_aggtrades_20191011-13.json").read_text())
    return [(f"XRPETH{i:02d}", t) for i in range(SYMBOLS) for t in trades]


def busy_trades(repeats: int = 10) -> list[tuple]:
    """The 91-second BTCUSDT tape repeated back to back: each copy moved on in time and in trade ids."""
    trades = json.loads((TAPES / "btcusdt_aggtrades_20210404.json").read_text())
    span = trades[-1]["T"] - trades[0]["T"] + 1000
    ids = trades[-1]["a"] - trades[0]["a"] + 1
    return [(f"BTCUSDT{i:02d}", dict(t, a=t["a"] + r * ids, T=t["T"] + r * span))
            for i in range(SYMBOLS) for r in range(repeats) for t in trades]


def fill_topic(settings, topic: str, trades: list[tuple]) -> int:
    records = [(symbol.encode(), *trade_value(symbol, t)[1:]) for symbol, t in trades]
    produce_all(settings.kafka_bootstrap, topic, records, **{"compression.type": "lz4"})
    return len(records)


def raw_consume(settings, topic: str, n: int) -> float:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"bench-raw-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen, start, start_seen = 0, None, 0
    while seen < n:
        msgs = consumer.consume(10_000, timeout=1)
        seen += sum(1 for m in msgs if m.error() is None)
        if start is None and seen >= WARMUP * n:
            start, start_seen = time.perf_counter(), seen
    elapsed = time.perf_counter() - start
    consumer.close()
    return (n - start_seen) / elapsed


def timed(run, stop, processed, n: int) -> float:
    """Records per second processed by `run()` (in this thread: Quix installs its signal handlers there),
    from the first 10% of the records to the last; `stop()` ends it."""
    marks = {}

    def watch():
        while processed() < WARMUP * n:
            time.sleep(0.001)
        marks["start"], marks["from"] = time.perf_counter(), processed()
        while processed() < n:
            time.sleep(0.01)
        marks["end"] = time.perf_counter()
        stop()

    threading.Thread(target=watch, daemon=True).start()
    run()
    return (n - marks["from"]) / (marks["end"] - marks["start"])


def stream_rate(settings, topic: str, n: int, workdir: Path) -> float:
    u = uuid.uuid4().hex[:6]
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    outs = [fresh_topic(admin, name) for name in ("candles", "stats", "alerts", "valid-trades")]
    s = settings.model_copy(update={
        "aggtrades_topic": topic, "candles_topic": outs[0], "stats_topic": outs[1],
        "alerts_topic": outs[2], "trades_topic": outs[3], "dlq_topic_prefix": f"bench.{u}.dlq.",
        "stream_consumer_group": f"bench-stream-{u}", "var_dir": workdir / f"var-{u}"})
    function = StreamFunction(s)
    return timed(function.run, function.app.stop, lambda: function.counters["trades_in"], n)


def quix_window_floor(settings, topic: str, n: int, workdir: Path) -> float:
    """What Quix Streams itself costs here: one tumbling window summing integers, nothing parsed, nothing
    written, same guarantee and commit interval as the stream function. No function built on its windows
    can be faster."""
    u = uuid.uuid4().hex[:6]
    app = Application(broker_address=settings.kafka_bootstrap, consumer_group=f"bench-floor-{u}",
                      auto_offset_reset="earliest", processing_guarantee=settings.stream_processing_guarantee,
                      commit_interval=settings.stream_commit_interval_s, state_dir=str(workdir / f"floor-{u}"),
                      loglevel=None)
    seen = [0]

    def one(_value) -> int:
        seen[0] += 1
        return 1

    (app.dataframe(app.topic(topic, key_deserializer="str", value_deserializer="bytes")).apply(one)
     .tumbling_window(duration_ms=60_000, grace_ms=settings.stream_grace_s * 1000, name="floor")
     .reduce(reducer=lambda total, v: total + v, initializer=lambda v: v).final())
    return timed(app.run, app.stop, lambda: seen[0], n)


def measure(settings, trades: list[tuple], workdir: Path) -> tuple[int, float, float, float]:
    topic = fresh_topic(AdminClient({"bootstrap.servers": settings.kafka_bootstrap}), "trades")
    n = fill_topic(settings, topic, trades)
    raw = max(raw_consume(settings, topic, n) for _ in range(3))  # the bare consumer's best: it varies run to run
    return n, raw, stream_rate(settings, topic, n, workdir), quix_window_floor(settings, topic, n, workdir)


def run(workdir: Path) -> None:
    settings = get_settings()
    n, raw, rate, floor = measure(settings, quiet_trades(), workdir)
    record(stream_trades_per_s=round(rate), raw_consumer_trades_per_s=round(raw),
           stream_vs_raw_consumer=round(rate / raw, 3), stream_bench_trades=n,
           quix_window_floor_per_s=round(floor), quix_window_floor_vs_raw_consumer=round(floor / raw, 3))
    n, raw, rate, floor = measure(settings, busy_trades(), workdir)
    record(stream_busy_trades_per_s=round(rate), raw_consumer_busy_trades_per_s=round(raw),
           stream_busy_vs_raw_consumer=round(rate / raw, 3), stream_busy_bench_trades=n,
           quix_window_floor_busy_per_s=round(floor), quix_window_floor_busy_vs_raw_consumer=round(floor / raw, 3))
