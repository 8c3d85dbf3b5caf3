"""Benchmark of the stream job (flink/*.sql on the stack's Flink cluster, exactly-once, dead-letter split on)
against a bare consumer reading the same topic in the same run.

Two markets made of real trades, because the job's cost has two parts: a part per trade (parse, the running
candle, one window update) and a part per symbol-minute (a candle written, a closed minute, a 5-minute
statistic). The quiet one is the XRPETH tape under 16 symbols: about 5 trades per symbol-minute, as when catching
up on history of quiet pairs. The busy one is the BTCUSDT tape played back to back 10 times under 16 symbols: about
800 trades per symbol-minute, as on a major pair. Then the latency of a live flow: a trade produced to its candle's
update readable with read_committed.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.common import TAPES, fresh_topic, produce_all, record
from cryptopipe.settings import get_settings
from functions.binance_source.trades import trade_value
from ops import flink, flink_deploy
from ops.process import tree_rss_mb

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
    produce_all(settings.kafka_config(), topic, records, **{"compression.type": "lz4"})
    return len(records)


def raw_consume(settings, topic: str, n: int) -> float:
    consumer = Consumer({**settings.kafka_config(), "group.id": f"bench-raw-{uuid.uuid4().hex[:6]}",
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


# One subtask per partition of the trades topic: what the engine can do on this machine (the stack's own job runs at
# FLINK_PARALLELISM, 1 by default, next to it in the same cluster).
PARALLELISM = 3


def job_settings(settings, topic: str, workdir: Path, parallelism: int = 1):
    """The stream job on `topic` with outputs, group, job name and checkpoints of its own; running."""
    u = uuid.uuid4().hex[:6]
    admin = AdminClient(settings.kafka_config())
    outs = [fresh_topic(admin, name) for name in ("candles", "stats", "alerts", "valid-trades")]
    dlq_prefix = f"bench.{u}.dlq."
    fresh_dlq = dlq_prefix + "stream"
    admin.create_topics([NewTopic(fresh_dlq, 1, 1)])[fresh_dlq].result()
    s = settings.model_copy(update={"kafka_as_admin": True, 
        "aggtrades_topic": topic, "candles_topic": outs[0], "stats_topic": outs[1], "alerts_topic": outs[2],
        "trades_topic": outs[3], "dlq_topic_prefix": dlq_prefix, "stream_consumer_group": f"bench-stream-{u}",
        "flink_job_name": f"bench-stream-{u}", "flink_idle_timeout_s": 2, "var_dir": workdir / f"var-{u}",
        "flink_parallelism": parallelism})
    flink_deploy.ensure_running(s)
    return s


def written(consumer: Consumer, topic: str, partitions: int) -> int:
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in range(partitions))


def stream_rate(settings, topic: str, n: int, workdir: Path) -> tuple[float, float]:
    """(trades per second, Flink's memory in MiB at the end): every trade comes out on the validated trades topic,
    so its end offsets count what the job has processed; from the first 10% of the trades to the last."""
    s = job_settings(settings, topic, workdir, PARALLELISM)
    probe = Consumer({**settings.kafka_config(), "group.id": "bench-probe"})
    try:
        while (done := written(probe, s.trades_topic, 3)) < WARMUP * n:
            time.sleep(0.01)
        start, start_done = time.perf_counter(), done
        while (done := written(probe, s.trades_topic, 3)) < n:
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        memory = sum(tree_rss_mb(svc.pid()) for svc in flink.services(settings) if svc.pid())
    finally:
        probe.close()
        flink_deploy.cancel(s)
    return (done - start_done) / elapsed, memory


def latency(settings, workdir: Path, seconds: float = 20, per_second: int = 200) -> list[float]:
    """Milliseconds from a trade produced (live, timestamped now) to the first committed candle update that
    holds it, read with read_committed, for every trade of a steady flow over 8 symbols."""
    admin = AdminClient(settings.kafka_config())
    topic = fresh_topic(admin, "live-trades")
    s = job_settings(settings, topic, workdir)
    sent: dict[tuple[str, int], list[float]] = {}  # (symbol, minute) -> send time of its 1st, 2nd, ... trade
    seen: dict[tuple[str, int], int] = {}
    out: list[float] = []
    reader = Consumer({**settings.kafka_config(), "group.id": f"bench-lat-{uuid.uuid4().hex[:6]}",
                       "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    reader.subscribe([s.candles_topic])
    stop = threading.Event()

    def read():
        while not stop.is_set():
            for m in reader.consume(1000, timeout=0.2):
                if m.error():
                    continue
                now, c = time.perf_counter(), json.loads(m.value())
                key = (c["symbol"], c["window_start"])
                for i in range(seen.get(key, 0), min(c["trade_count"], len(sent.get(key, ())))):
                    out.append((now - sent[key][i]) * 1000)
                seen[key] = max(seen.get(key, 0), c["trade_count"])

    reading = threading.Thread(target=read, daemon=True)
    reading.start()
    producer = Producer({**settings.kafka_config(), "linger.ms": 0, "partitioner": "murmur2_random"})
    try:
        for i in range(int(seconds * per_second)):
            symbol, now_ms = f"LAT{i % 8}", int(time.time() * 1000)
            item = {"a": i, "p": "100.00000000", "q": "1.00000000", "f": i, "l": i, "T": now_ms, "m": True}
            producer.produce(topic, key=symbol.encode(), value=trade_value(symbol, item)[2], timestamp=now_ms)
            producer.poll(0)
            sent.setdefault((symbol, now_ms - now_ms % 60_000), []).append(time.perf_counter())
            time.sleep(1 / per_second)
        producer.flush(10)
        time.sleep(5)
    finally:
        stop.set()
        reading.join()
        reader.close()
        flink_deploy.cancel(s)
    return out


def measure(settings, trades: list[tuple], workdir: Path) -> tuple[int, float, float, float]:
    topic = fresh_topic(AdminClient(settings.kafka_config()), "trades")
    n = fill_topic(settings, topic, trades)
    raw = max(raw_consume(settings, topic, n) for _ in range(3))  # the bare consumer's best: it varies run to run
    return n, raw, *stream_rate(settings, topic, n, workdir)


def run(workdir: Path) -> None:
    settings = get_settings()
    n, raw, rate, memory = measure(settings, quiet_trades(), workdir)
    record(stream_trades_per_s=round(rate), raw_consumer_trades_per_s=round(raw),
           stream_vs_raw_consumer=round(rate / raw, 3), stream_bench_trades=n, stream_parallelism=PARALLELISM)
    n, raw, rate, memory = measure(settings, busy_trades(), workdir)
    record(stream_busy_trades_per_s=round(rate), raw_consumer_busy_trades_per_s=round(raw),
           stream_busy_vs_raw_consumer=round(rate / raw, 3), stream_busy_bench_trades=n,
           flink_memory_mb=round(memory))
    lat = sorted(latency(settings, workdir))
    record(stream_latency_ms_p50=round(statistics.median(lat)), stream_latency_ms_p99=round(lat[int(0.99 * len(lat))]),
           stream_latency_samples=len(lat))
