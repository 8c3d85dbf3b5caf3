"""Benchmark of the stream function against a bare consumer reading the same topic in the same run."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from bench.common import TAPES, fresh_topic, produce_all, record
from cryptopipe.settings import get_settings
from functions.binance_source.source import trade_value
from functions.stream_processor.app import StreamFunction

COPIES = 16  # the XRPETH tape under 16 symbols: ~200,000 real trades


def fill_topic(settings, topic: str) -> int:
    trades = json.loads((TAPES / "xrpeth_aggtrades_20191011-13.json").read_text())
    records = [(f"XRPETH{i:02d}".encode(), *trade_value(f"XRPETH{i:02d}", t)[1:])
               for i in range(COPIES) for t in trades]
    produce_all(settings.kafka_bootstrap, topic, records, **{"compression.type": "lz4"})
    return len(records)


def raw_consume(settings, topic: str, n: int) -> float:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"bench-raw-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen, start = 0, None
    while seen < n:
        msgs = consumer.consume(10_000, timeout=1)
        if msgs and start is None:
            start = time.perf_counter()
        seen += sum(1 for m in msgs if m.error() is None)
    elapsed = time.perf_counter() - start
    consumer.close()
    return n / elapsed


def stream_rate(settings, topic: str, n: int, workdir: Path) -> float:
    u = uuid.uuid4().hex[:6]
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    outs = [fresh_topic(admin, name) for name in ("candles", "stats", "alerts", "dlq")]
    s = settings.model_copy(update={
        "stream_input_topic": topic, "stream_candles_topic": outs[0], "stream_stats_topic": outs[1],
        "stream_alerts_topic": outs[2], "stream_dlq_topic": outs[3], "stream_consumer_group": f"bench-stream-{u}",
        "var_dir": workdir / "var"})
    function = StreamFunction(s)
    marks = {}

    def watch():
        while function.counters["trades_in"] == 0:
            time.sleep(0.001)
        marks["start"] = time.perf_counter()
        while function.counters["trades_in"] < n:
            time.sleep(0.01)
        marks["end"] = time.perf_counter()
        function.app.stop()

    threading.Thread(target=watch, daemon=True).start()
    function.run()  # in the main thread: Quix installs its signal handlers there
    return n / (marks["end"] - marks["start"])


def run(workdir: Path) -> None:
    settings = get_settings()
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topic = fresh_topic(admin, "trades")
    n = fill_topic(settings, topic)
    raw = raw_consume(settings, topic, n)
    rate = stream_rate(settings, topic, n, workdir)
    record(stream_trades_per_s=round(rate), raw_consumer_trades_per_s=round(raw),
           stream_vs_raw_consumer=round(rate / raw, 3), stream_bench_trades=n)
