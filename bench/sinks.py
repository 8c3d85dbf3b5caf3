"""Benchmarks of the sinks: the JDBC sink against COPY, the Redis function against a bare pipeline, and the
latency from a trade produced to Kafka to its price visible in Redis."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import redis
import requests
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bench.common import TAPES, Scraped, free_port, fresh_topic, produce_all, record
from ops import kafka_security
from ops.connectors import is_running, load_configs
from cryptopipe.settings import get_settings
from functions.binance_source.trades import trade_value
from functions.redis_sink.sink import RedisSink

COPIES = 8  # the XRPETH tape under 8 symbols: ~100,000 real trades
# The JDBC sink under 24 symbols, ~300,000 trades: ten seconds or more of steady loading, so neither the new
# connector's first (JIT-cold) batches nor one noisy second decide the figure.
JDBC_COPIES = 24


def trade_records(copies: int = COPIES) -> list[tuple[bytes, int, bytes, dict]]:
    trades = json.loads((TAPES / "xrpeth_aggtrades_20191011-13.json").read_text())
    out = []
    for i in range(copies):
        symbol = f"XRPETH{i:02d}"
        for t in trades:
            _, ts, value = trade_value(symbol, t)
            out.append((symbol.encode(), ts, value, dict(t, s=symbol)))
    return out


def jdbc(settings) -> None:
    admin = AdminClient(settings.kafka_config())
    records = trade_records(JDBC_COPIES)
    n = len(records)
    tag = uuid.uuid4().hex[:8]
    sink_table, copy_table = f"bench_jdbc_{tag}", f"bench_copy_{tag}"
    owner = psycopg2.connect(**settings.pg_params("owner"))
    owner.autocommit = True
    cur = owner.cursor()
    for table in (sink_table, copy_table):
        cur.execute(f"CREATE TABLE {table} (LIKE trades INCLUDING ALL)")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO crypto_writer")

    # Baseline: COPY of the same rows into the same kind of table.
    buf = io.StringIO()
    for _, _, _, t in records:
        buf.write(f"{t['s']}\t{t['a']}\t{t['p']}\t{t['q']}\t{t['f']}\t{t['l']}\t"
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t['T'] / 1000))}.{t['T'] % 1000:03d}+00\t{t['m']}\n")
    # A COPY of 300,000 rows takes about two seconds, short enough for one quiet or busy moment of the
    # machine to swing it by half: the median of three runs.
    copy_rates = []
    for _ in range(3):
        cur.execute(f"TRUNCATE {copy_table}")
        buf.seek(0)
        start = time.perf_counter()
        cur.copy_expert(f"COPY {copy_table} FROM STDIN", buf)
        copy_rates.append(n / (time.perf_counter() - start))
    copy_rate = statistics.median(copy_rates)

    topic = fresh_topic(admin, "jdbc")
    produce_all(settings.kafka_config(), topic, [r[:3] for r in records])
    config = load_configs()["jdbc-trades"] | {"topics": topic, "collection.name.format": sink_table,
                                              "errors.deadletterqueue.topic.name": f"{topic}-dlq"}
    name = f"bench-jdbc-{tag}"
    # The worker's user may read only the stack's topics: this connector's are granted, as an operator would.
    kafka_security.grant(settings, kafka_security.connector_grants(name, config))
    requests.put(f"{settings.connect_url}/connectors/{name}/config", json=config, auth=settings.connect_auth, timeout=30).raise_for_status()
    try:
        count = lambda: cur.execute(f"SELECT count(*) FROM {sink_table}") or cur.fetchone()[0]  # noqa: E731
        while count() == 0:
            time.sleep(0.05)
        start = time.perf_counter()
        # count(*) over a growing table costs PostgreSQL ~15 ms a call at the end: poll slowly until the
        # last tenth, so the measuring does not take the CPU the sink is measured on.
        while (done := count()) < n:
            time.sleep(0.5 if done < 0.9 * n else 0.05)
        jdbc_rate = n / (time.perf_counter() - start)
        status = requests.get(f"{settings.connect_url}/connectors/{name}/status", auth=settings.connect_auth, timeout=10).json()
        assert is_running(status), status
    finally:
        requests.delete(f"{settings.connect_url}/connectors/{name}", auth=settings.connect_auth, timeout=30)
        for table in (sink_table, copy_table):
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        owner.close()
    record(jdbc_rows_per_s=round(jdbc_rate), copy_rows_per_s=round(copy_rate),
           jdbc_vs_copy=round(jdbc_rate / copy_rate, 3), jdbc_bench_rows=n)


def redis_throughput(settings, workdir: Path) -> None:
    admin = AdminClient(settings.kafka_config())
    records = trade_records()
    n = len(records)
    # Admin: the baseline writes keys of its own (benchraw:*), outside what the sink's user may touch.
    client = redis.Redis.from_url(settings.redis_url("admin"))

    # Baseline: a bare pipelined HSET per record, in batches of the sink's size.
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i, (_, ts, _, t) in enumerate(records, 1):
        pipe.hset(f"benchraw:{t['s']}", mapping={"price": t["p"], "trade_time": ts, "agg_id": t["a"]})
        if i % settings.redis_batch_size == 0:
            pipe.execute()
    pipe.execute()
    raw_rate = n / (time.perf_counter() - start)
    client.delete(*[f"benchraw:XRPETH{i:02d}" for i in range(COPIES)])

    topic, candles = fresh_topic(admin, "redis"), fresh_topic(admin, "redis-candles")
    produce_all(settings.kafka_config(), topic, [r[:3] for r in records])
    # Metrics off, on, on, off (a drift over the four runs, warming up say, lands on both sides alike), each run a
    # new group reading the same topic from its start.
    runs = {False: [], True: []}
    symbols = sorted({r[0].decode() for r in records})
    for metrics in (False, True, True, False):
        # Each run from empty keys: newer-only writes over prices already there would skip every record.
        client.delete(*[f"{kind}:{symbol}" for symbol in symbols for kind in ("price", "prices", "candle")])
        runs[metrics].append(sink_rate(settings, workdir, topic, candles, n, metrics))
    rate = runs[False][0]
    record(redis_records_per_s=round(rate), raw_redis_pipeline_per_s=round(raw_rate),
           redis_vs_raw_pipeline=round(rate / raw_rate, 3), redis_bench_records=n,
           redis_runs_metrics_off_per_s=[round(r) for r in runs[False]],
           redis_runs_metrics_on_per_s=[round(r) for r in runs[True]],
           metrics_overhead_redis_sink=round(sum(runs[True]) / sum(runs[False]), 3))


def sink_rate(settings, workdir: Path, topic: str, candles: str, n: int, metrics: bool) -> float:
    """Records/s of the Redis sink over the topic's n records (from the first written); with `metrics`, serving
    them and scraped every second."""
    s = settings.model_copy(update={"kafka_as_admin": True, "aggtrades_topic": topic, "candles_topic": candles,
                                    "redis_sink_group": f"bench-redis-{uuid.uuid4().hex[:6]}",
                                    "var_dir": workdir / "var", "redis_sink_metrics_port": free_port()})
    sink = RedisSink(s)
    with Scraped(s, sink.counters) if metrics else contextlib.nullcontext():
        thread = threading.Thread(target=sink.run, daemon=True)
        thread.start()
        while sink.counters["records"] == 0:
            time.sleep(0.001)
        start, first = time.perf_counter(), sink.counters["records"]
        while sink.counters["records"] < n:
            time.sleep(0.005)
        rate = (n - first) / (time.perf_counter() - start)
        sink.stop()
        thread.join(30)
    print(f"    redis sink, metrics {'on' if metrics else 'off'}: {rate:,.0f} records/s")
    return rate


def redis_latency(settings, workdir: Path, samples: int = 2000) -> None:
    """Trades produced one by one (trade time = send time); the price arrives through pub/sub."""
    admin = AdminClient(settings.kafka_config())
    topic, candles = fresh_topic(admin, "latency", 1), fresh_topic(admin, "latency-candles", 1)
    s = settings.model_copy(update={"kafka_as_admin": True, "aggtrades_topic": topic, "candles_topic": candles,
                                    "redis_sink_group": f"bench-lat-{uuid.uuid4().hex[:6]}", "var_dir": workdir / "var"})
    symbol = f"LAT{uuid.uuid4().hex[:6].upper()}"
    sink = RedisSink(s)
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    pubsub = redis.Redis.from_url(settings.redis_url("reader")).pubsub()
    pubsub.subscribe(f"prices:{symbol}")
    latencies: list[float] = []

    def listen():
        for msg in pubsub.listen():
            if msg["type"] == "message":
                sent = json.loads(msg["data"])["trade_time"]
                latencies.append(time.time() * 1000 - sent)
                if len(latencies) >= samples:
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    producer = Producer({**settings.kafka_config(), "linger.ms": 0})
    time.sleep(3)  # the sink has joined its group
    for i in range(samples):
        now = int(time.time() * 1000)
        value = (f'{{"symbol":"{symbol}","agg_id":{i + 1},"price":1.00000000,"qty":1.00000000,"first_trade_id":{i},'
                 f'"last_trade_id":{i},"trade_time":{now},"is_buyer_maker":true}}')
        producer.produce(topic, key=symbol.encode(), value=value.encode(), timestamp=now)
        producer.poll(0)
        time.sleep(0.005)
    producer.flush(10)
    listener.join(5)
    sink.stop()
    thread.join(30)
    latencies.sort()
    record(e2e_redis_latency_ms_p50=round(statistics.median(latencies), 1),
           e2e_redis_latency_ms_p99=round(latencies[int(len(latencies) * 0.99) - 1], 1),
           e2e_redis_latency_samples=len(latencies))


def run(workdir: Path) -> None:
    settings = get_settings()
    jdbc(settings)
    redis_throughput(settings, workdir)
    redis_latency(settings, workdir)
