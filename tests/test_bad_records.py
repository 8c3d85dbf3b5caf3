"""Every class of malformed record that once stopped or skewed a consumer (chaos/malformed.py), interleaved with
real trades of the tapes, through every consumer as processes on the real Kafka and Redis: each one dead-letters
exactly the malformed records (matched by error.partition and error.offset), goes on, and computes from the
good trades alone what it would have without them. A record whose Kafka timestamp is 50 minutes ahead comes
before every trade of its symbol: none of them may be judged late (no late copy in the dead letters) and the
statistics must be exact. The JDBC sink reads only the stream function's validated
trades, so it never meets them. The notifier does the same for malformed alerts."""

from __future__ import annotations

import json
import random
import string
import time
import uuid
from decimal import Decimal

import psycopg2
import pytest
import redis
import requests
from confluent_kafka import Producer

from chaos import malformed
from chaos.malformed import YEAR_MS
from cryptopipe import schemas, topics
from functions.binance_source.trades import trade_value
from ops import flink_deploy, kafka_security
from ops.connectors import is_running, load_configs

from .helpers import (Process, caught_up, create_topics, delete_topics, kill_running, latest_by_key, plain_candles,
                      read_topic, start_flink_job, tape, wait_for)
from . import test_alert_notifier
from .test_alert_notifier import alert
from .test_stream import plain_stats

harness = test_alert_notifier.harness  # the notifier's fixture: topics, a webhook receiver, the process

TAPES = {"BTC": "btcusdt_aggtrades_20210404.json", "ETH": "ethusdt_aggtrades_20210404.json"}


def origin(msg) -> tuple[str, int, int]:
    """(topic, partition, offset) of the record a dead letter was made from."""
    headers = dict(msg.headers() or [])
    return headers["error.topic"].decode(), int(headers["error.partition"]), int(headers["error.offset"])


def bad_candles(symbol: str) -> list[tuple[str, bytes | None, bytes | None]]:
    """Candles the Redis sink must refuse: a null field (it once crashed the sink), no trades, a tombstone."""
    good = {"symbol": symbol, "window_start": 1617566580000, "window_end": 1617566640000, "open": "1.00000000",
            "high": "1.00000000", "low": "1.00000000", "close": "1.00000000", "volume": "1.00000000",
            "quote_volume": "1.0000000000000000", "trade_count": 1, "vwap": "1.00000000"}

    def value(**change) -> bytes:  # numbers as JSON numbers, with their digits
        fields = good | change
        return ("{" + ",".join(f'"{k}":{json.dumps(v) if k == "symbol" or v is None else v}'
                               for k, v in fields.items()) + "}").encode()

    return [("candle_null_open", symbol.encode(), value(open=None)),
            ("candle_no_trades", symbol.encode(), value(trade_count=0)),
            ("candle_tombstone", symbol.encode(), None)]


@pytest.fixture(scope="module")
def flow(settings, stack, tmp_path_factory):
    """Real trades under symbols of their own with every malformed class of each symbol spread among them,
    on a topic of their own; the stream function and the Redis sink run over it as processes until both
    have caught up. Yields what was sent; removes topics and Redis keys afterwards."""
    tmp = tmp_path_factory.mktemp("bad-records")
    u = uuid.uuid4().hex[:10]
    tag = "".join(random.choices(string.ascii_uppercase, k=5))

    class Flow:
        trades, valid, candles, stats, alerts = (f"test.{n}-{u}" for n in ("trades", "valid", "candles", "stats",
                                                                          "alerts"))
        dlq_prefix = f"test.{u}.dlq."
        stream_dlq, redis_dlq = dlq_prefix + "stream", dlq_prefix + "redis-sink"
        group = f"test-bad-{u}"
        good: dict[str, list[dict]] = {f"{p}{tag}USDT": tape(name) for p, name in TAPES.items()}
        sent_good: list[tuple[bytes, bytes, int]] = []  # key, value, timestamp
        # (topic, partition, offset) -> (class, key, value): on the trades topic, and bad candles on the
        # candles topic (only the Redis sink reads those)
        sent_bad: dict[tuple[str, int, int], tuple[str, bytes | None, bytes | None]] = {}
        procs: list[Process] = []

    f = Flow()
    create_topics(settings, f.trades, f.valid, f.candles, f.stats, f.alerts, partitions=3)
    create_topics(settings, f.stream_dlq, f.redis_dlq, partitions=1)
    r = redis.Redis.from_url(settings.redis_url("admin"))  # the cleanup deletes the run's keys

    def sent(kind, key, value):
        def delivered(err, msg):
            assert err is None, err
            f.sent_bad[(msg.topic(), msg.partition(), msg.offset())] = (kind, key, value)
        return delivered

    try:
        producer = Producer({**settings.kafka_config(), "partitioner": "murmur2_random"})
        for symbol, trades in f.good.items():
            for kind, key, value, timestamp in malformed.timestamped(symbol):
                producer.produce(f.trades, key=key, value=value, timestamp=timestamp,
                                 on_delivery=sent(kind, key, value))
            bad = malformed.records(symbol)
            every = len(trades) // (len(bad) + 1)
            for i, t in enumerate(trades):
                _, ts, value = trade_value(symbol, t)
                producer.produce(f.trades, key=symbol.encode(), value=value, timestamp=ts)
                f.sent_good.append((symbol.encode(), value, ts))
                if i % every == every - 1 and bad:
                    kind, key, value = bad.pop(0)

                    producer.produce(f.trades, key=key, value=value, timestamp=ts, on_delivery=sent(kind, key, value))
            assert not bad
            for kind, key, value in bad_candles(symbol):
                producer.produce(f.candles, key=key, value=value, on_delivery=sent(kind, key, value))
        assert producer.flush(30) == 0
        assert len(f.sent_bad) == 2 * (len(malformed.records("X")) + len(malformed.timestamped("X"))
                                       + len(bad_candles("X")))

        env = {"AGGTRADES_TOPIC": f.trades, "TRADES_TOPIC": f.valid, "CANDLES_TOPIC": f.candles,
               "STATS_TOPIC": f.stats, "ALERTS_TOPIC": f.alerts, "DLQ_TOPIC_PREFIX": f.dlq_prefix,
               "STREAM_CONSUMER_GROUP": f.group, "REDIS_SINK_GROUP": f.group + "-redis", "VAR_DIR": str(tmp / "var")}
        # The stream engine: the job of flink/*.sql under a name of its own, on the stack's Flink cluster. The
        # default idle timeout: a partition the reader has not reached within a short one would count as idle, the
        # watermark would run ahead on the others, and its first trades would be late (copied to the DLQ).
        f.job = start_flink_job(settings, f"test-bad-{u}", aggtrades_topic=f.trades, trades_topic=f.valid,
                                candles_topic=f.candles, stats_topic=f.stats, alerts_topic=f.alerts,
                                dlq_topic_prefix=f.dlq_prefix, stream_consumer_group=f.group, var_dir=tmp / "var",
                                flink_idle_timeout_s=settings.flink_idle_timeout_s)
        f.sink = Process("functions.redis_sink.sink", env, tmp / "redis-sink.log")
        f.procs.append(f.sink)
        wait_for(lambda: caught_up(settings, f.group, f.trades), 180, "the stream job to catch up", 0.5)
        # Its outputs commit with the checkpoint that committed the offsets, a moment apart.
        bad_trades = sum(1 for origin in f.sent_bad if origin[0] == f.trades)
        wait_for(lambda: len(read_topic(settings, f.stream_dlq, 5)) >= bad_trades, 60, "the stream's dead letters", 1)
        time.sleep(3 * settings.flink_checkpoint_interval_s)
        wait_for(lambda: caught_up(settings, f.group + "-redis", f.trades)
                 and caught_up(settings, f.group + "-redis", f.candles), 120, "the Redis sink to catch up", 0.5)
        yield f
    finally:
        kill_running(f.procs)
        if hasattr(f, "job"):
            flink_deploy.cancel(f.job)
        delete_topics(settings, f.trades, f.valid, f.candles, f.stats, f.alerts, f.stream_dlq, f.redis_dlq)
        for symbol in f.good:
            r.delete(f"price:{symbol}", f"prices:{symbol}", f"candle:{symbol}")


@pytest.mark.parametrize("component", ["stream", "redis-sink"])
def test_each_consumer_dead_letters_exactly_the_malformed_records_and_goes_on(settings, flow, component):
    assert flow.sink.proc.poll() is None, "the Redis sink died"
    assert flink_deploy.running_job(flow.job)["state"] == "RUNNING", "the stream job stopped"
    dead = read_topic(settings, flow.dlq_prefix + component)
    # The stream job reads trades only; the Redis sink trades and candles.
    expected = {o for o in flow.sent_bad if component == "redis-sink" or o[0] == flow.trades}
    assert sorted(origin(m) for m in dead) == sorted(expected)  # each once, nothing else
    kinds = set()
    for m in dead:
        kind, key, value = flow.sent_bad[origin(m)]
        headers = dict(m.headers())
        assert headers["error.reason"].strip(), kind
        assert headers["error.component"] == component.encode()
        assert (m.key(), m.value()) == (key, value), kind  # the record as received
        kinds.add(kind)
    assert kinds == {kind for kind, _, _ in malformed.records("X")} | {k for k, *_ in malformed.timestamped("X")} | (
        {kind for kind, _, _ in bad_candles("X")} if component == "redis-sink" else set())


def test_the_validated_trades_and_the_candles_are_those_of_the_good_trades(settings, flow):
    valid = read_topic(settings, flow.valid)
    # Byte for byte, with key and timestamp: exactly the good trades.
    assert sorted((m.key(), m.value(), m.timestamp()[1]) for m in valid) == sorted(flow.sent_good)
    written = [m for m in read_topic(settings, flow.candles) if (m.topic(), m.partition(), m.offset()) not in
               flow.sent_bad]  # the stream function's candles, without the bad ones this test wrote there
    final = latest_by_key(written, ("symbol", "window_start"))
    for symbol, trades in flow.good.items():
        expected = plain_candles(trades)
        got = {ws: c for (s, ws), c in final.items() if s == symbol}
        assert sorted(got) == sorted(expected), symbol
        for start, want in expected.items():
            assert {k: got[start][k] for k in want} == want, (symbol, start)
    assert {s for s, _ in final} == set(flow.good)


def test_the_statistics_are_exact_and_no_trade_was_late(settings, flow):
    """The record from 50 minutes ahead moved no event time: the windows the tapes close (their first five
    minutes) are there, each equal to the plain computation from the good trades."""
    def stats():  # the idle partition stops holding the watermark back after FLINK_IDLE_TIMEOUT_S
        return latest_by_key(read_topic(settings, flow.stats), ("symbol", "window_start"))

    wait_for(lambda: {sym for sym, _ in stats()} >= set(flow.good), settings.flink_idle_timeout_s + 60,
             "a statistic of each symbol (none: its trades were judged late)", 2)
    for symbol, trades in flow.good.items():
        got = {start: s for (sym, start), s in stats().items() if sym == symbol}
        for start, s in got.items():
            for field, value in plain_stats(trades, start).items():
                assert s[field] == value, (symbol, start, field, s[field], value)


def test_redis_holds_the_last_good_price(settings, flow):
    r = redis.Redis.from_url(settings.redis_url("reader"), decode_responses=True)
    for symbol, trades in flow.good.items():
        last = trades[-1]
        wait_for(lambda: r.hget(f"price:{symbol}", "agg_id") == str(last["a"]), 30, f"{symbol}'s last price")
        price = r.hgetall(f"price:{symbol}")
        assert (price["price"], int(price["trade_time"])) == (last["p"], last["T"])
        assert r.lrange(f"prices:{symbol}", 0, 0) == [f"{last['p']}@{last['T']}"]
        assert int(r.hget(f"candle:{symbol}", "window_start")) == max(plain_candles(trades))


def test_the_jdbc_sink_reads_only_validated_trades_and_stays_running(settings, flow):
    """jdbc-trades reads crypto.trades (the stream function's validated trades), never binance.aggtrades. A
    copy of it over this run's validated trades loads exactly the good ones into a table like `trades`,
    nothing reaches its dead-letter topic and its task stays RUNNING."""
    config = load_configs()["jdbc-trades"]
    assert config["topics"] == topics.TRADES != topics.AGGTRADES
    tag = uuid.uuid4().hex[:8]
    table, name, dlq = f"test_trades_{tag}", f"test-jdbc-trades-{tag}", f"test.jdbc-dlq-{tag}"
    create_topics(settings, dlq, partitions=1)
    owner = psycopg2.connect(**settings.pg_params("owner"))
    owner.autocommit = True
    cur = owner.cursor()
    cur.execute(f"CREATE TABLE {table} (LIKE trades INCLUDING ALL)")  # the same checks as `trades`
    cur.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO crypto_writer")
    url = f"{settings.connect_url}/connectors/{name}"
    try:
        config = config | {"topics": flow.valid, "collection.name.format": table,
                           "errors.deadletterqueue.topic.name": dlq}
        kafka_security.grant(settings, kafka_security.connector_grants(name, config))
        requests.put(f"{url}/config", json=config, auth=settings.connect_auth, timeout=30).raise_for_status()

        def rows():
            cur.execute(f"SELECT symbol, agg_id, price, qty FROM {table}")
            return cur.fetchall()

        wait_for(lambda: len(rows()) >= len(flow.sent_good), 120, f"{len(flow.sent_good)} rows in {table}", 0.5)
        assert sorted(rows()) == sorted((s, t["a"], Decimal(t["p"]), Decimal(t["q"]))
                                        for s, trades in flow.good.items() for t in trades)
        assert is_running(requests.get(f"{url}/status", auth=settings.connect_auth, timeout=10).json())
        assert read_topic(settings, dlq) == []
    finally:
        requests.delete(url, auth=settings.connect_auth, timeout=30)
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        owner.close()
        delete_topics(settings, dlq)


def alert_json(record: dict, **raw_fields: str) -> bytes:
    """An alert value in field order with some fields' JSON text given raw (a field given as None is left out)."""
    parts = []
    for f in schemas.ALERT:
        if f.name in raw_fields:
            if raw_fields[f.name] is not None:
                parts.append(f'"{f.name}":{raw_fields[f.name]}')
            continue
        value = record[f.name]
        parts.append(f'"{f.name}":{json.dumps(value) if isinstance(value, (str, int)) else value}')
    return ("{" + ",".join(parts) + "}").encode()


def test_the_notifier_dead_letters_malformed_alerts_and_delivers_the_good_ones(settings, stack, harness):
    good = [alert("BTCUSDT"), alert("ETHUSDT", "volume_spike")]
    now_ms = int(time.time() * 1000)
    base = alert("DOTUSDT")
    bad = {
        "value 1e999999999": alert_json(base, value="1e999999999"),
        "threshold -1e999999999": alert_json(base, threshold="-1e999999999"),
        "price 1e999999999": alert_json(base, price="1e999999999"),
        "window_start 2^63+5": alert_json(base, window_start=str(2**63 + 5)),
        "window_start negative": alert_json(base, window_start="-5"),
        "detected_at missing": alert_json(base, detected_at=None),
        "window_start ten years ahead": alert_json(base, window_start=str(now_ms + 10 * YEAR_MS)),
        "detected_at an hour ahead": alert_json(base, detected_at=str(now_ms + 3600_000)),
        "rule unknown": alert_json(base | {"rule": "drop_tables"}),
        "value true": alert_json(base, value="true"),
        "tombstone": None,
    }
    sent_bad: dict[int, str] = {}
    producer = harness.producer

    def send(key: bytes, value: bytes | None, kind: str | None) -> None:
        def done(err, msg):
            assert err is None, err
            if kind is not None:
                sent_bad[msg.offset()] = kind
        producer.produce(harness.topic, key=key, value=value, on_delivery=done)

    send(good[0]["alert_id"].encode(), schemas.to_json(schemas.ALERT, good[0]), None)
    for kind, value in bad.items():
        send(base["alert_id"].encode(), value, kind)
    send(b"not-its-id", schemas.to_json(schemas.ALERT, base), "key not the alert id")
    send(good[1]["alert_id"].encode(), schemas.to_json(schemas.ALERT, good[1]), None)
    assert producer.flush(10) == 0

    proc = harness.start()
    harness.wait_done()
    wait_for(lambda: sorted(harness.receiver.delivered()) == sorted(a["alert_id"] for a in good), 30, "the good alerts")
    assert proc.proc.poll() is None, "the notifier died"
    dead = read_topic(settings, harness.dlq)
    assert sorted(int(dict(m.headers())["error.offset"]) for m in dead) == sorted(sent_bad)
    for m in dead:
        headers = dict(m.headers())
        assert headers["error.reason"].strip() and headers["error.topic"] == harness.topic.encode(), headers
    assert base["alert_id"] not in {r["id"] for r in harness.receiver.requests}
    assert proc.stop() == 0
    assert harness.counters()["bad_records"] == len(sent_bad)
