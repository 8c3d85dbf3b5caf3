"""`make status` for the operator on call: dead-letter depth, consumer lag and data freshness, checked against
numbers computed here from Kafka and PostgreSQL directly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, Producer, TopicPartition

from cryptopipe.settings import ROOT
from ops.dag_schedule import lateness
from ops.kafka_admin import LagProbe, consumer_lag

from .helpers import cells, create_topics, restart_service, wait_for


def status(env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "ops.status"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return result.stdout


def test_status_shows_dlq_depth_lag_and_freshness(stack, settings, unique):
    # Topic settings moved for this test: `make up`'s prepare step creates the topics under the names in
    # force, and status lists those; one record in the moved stream dead-letter topic, so its depth is not 0.
    topic, group = f"test.candles-{unique}", f"test-status-{unique}"
    moved = {"CANDLES_TOPIC": topic, "DLQ_TOPIC_PREFIX": f"test.{unique}.dlq."}
    prepared = subprocess.run([sys.executable, "-m", "ops.stack", "prepare"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**os.environ, **moved})
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert topic in prepared.stdout and f"test.{unique}.dlq.stream" in prepared.stdout
    producer = Producer(settings.kafka_config())
    producer.produce(f"test.{unique}.dlq.stream", value=b"{not json", headers=[("error.reason", b"test_status")])
    # A consumer group of our own, moved in as the Redis sink's group for this call, 5 records behind on one
    # partition of the (moved) candles topic it reads; it never committed the trades topic, so that has no row.
    for i in range(7):
        producer.produce(topic, value=b"x%d" % i, partition=0)
    producer.flush(10)
    consumer = Consumer({**settings.kafka_config(), "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    consumer.close()
    # A trade 3 s old for a symbol of our own (the freshness table lists the 20 freshest symbols).
    symbol = f"ST{unique[:8].upper()}"
    owner = psycopg2.connect(**settings.pg_params("owner"))
    owner.autocommit = True
    with owner.cursor() as cur:
        cur.execute("INSERT INTO trades VALUES (%s, 1, 1, 1, 1, 1, %s, true)",
                    (symbol, datetime.now(timezone.utc) - timedelta(seconds=3)))
    try:
        out = status({"REDIS_SINK_GROUP": group, **moved})
    finally:
        with owner.cursor() as cur:
            cur.execute("DELETE FROM trades WHERE symbol = %s", (symbol,))
        owner.close()

    [lag_row] = cells(out, group)
    assert lag_row[2] == topic and lag_row[3] == "5"

    probe = Consumer({**settings.kafka_config(), "group.id": f"probe-{unique}"})
    for name in (f"test.{unique}.dlq.stream", "crypto.dlq.jdbc-trades", f"test.{unique}.dlq.alert-notifier"):
        low, high = probe.get_watermark_offsets(TopicPartition(name, 0), timeout=10)
        [row] = cells(out, name)
        assert int(row[2].replace(",", "")) == high - low, row
    assert cells(out, f"test.{unique}.dlq.stream")[0][2] == "1"
    assert cells(out, f"test.candles-{unique}")[0][1] == "3"  # partitions
    assert not cells(out, "crypto.candles-1m") and not cells(out, "crypto.dlq.stream")  # moved away
    probe.close()

    [fresh] = cells(out, symbol)
    seconds = int(re.fullmatch(r"([\d,]+) s", fresh[1]).group(1).replace(",", ""))
    assert 3 <= seconds <= 60
    assert fresh[2] == "-"  # no candle for it


def test_lag_of_a_transactional_topic_ignores_commit_markers(stack, settings, unique):
    """A reader that has everything is 0 behind, though each transaction leaves a marker offset after it."""

    topic, group = f"test.txn-{unique}", f"test-txn-{unique}"
    create_topics(settings, topic, partitions=1)
    producer = Producer({**settings.kafka_config(), "transactional.id": f"test-{unique}"})
    producer.init_transactions(30)
    for batch in range(2):
        producer.begin_transaction()
        for i in range(3):
            producer.produce(topic, value=b"%d-%d" % (batch, i))
        producer.commit_transaction(30)
    # Offsets: records 0-2, marker 3, records 4-6, marker 7; the end offset is 8.
    probe = Consumer({**settings.kafka_config(), "group.id": group})
    assert probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 8)
    assert consumer_lag(settings.kafka_config(), group, (topic,)) is None  # nothing committed yet
    assert consumer_lag(settings.kafka_config(), group, (topic,), from_start=True) == {topic: 8}  # all ahead
    probe.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)  # read all six records
    assert consumer_lag(settings.kafka_config(), group, (topic,)) == {topic: 0}
    probe.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)  # the second batch unread
    assert consumer_lag(settings.kafka_config(), group, (topic,))[topic] > 0
    probe.close()


def test_lag_counts_the_topics_a_group_reads_and_never_commits_for_it(stack, settings, unique):
    """Only the topics asked for count; a partition never committed is left out unless the caller asks to count it
    from its start; the probe's Consumer of the group (never subscribed) commits nothing of its own."""
    read, other, group = f"test.lag-{unique}", f"test.lag-old-{unique}", f"test-lag-{unique}"
    create_topics(settings, read, partitions=3)
    create_topics(settings, other, partitions=1)
    producer = Producer(settings.kafka_config())
    for p in range(3):
        for i in range(4):
            producer.produce(read, value=b"%d" % i, partition=p)
    producer.produce(other, value=b"old")
    producer.flush(10)
    probe = LagProbe(settings.kafka_config())
    try:
        assert probe.lag(group, (read,)) is None  # nothing committed yet
        committer = Consumer({**settings.kafka_config(), "group.id": group})
        committer.commit(offsets=[TopicPartition(read, 0, 1), TopicPartition(other, 0, 0)], asynchronous=False)
        committer.close()
        assert probe.lag(group, (read,)) == {read: 3}  # partitions 1 and 2 never committed: left out
        assert probe.lag(group, (read,), from_start=True) == {read: 3 + 4 + 4}
        assert probe.lag(group, (read, other)) == {read: 3, other: 1}
        assert probe.lag(f"{group}-none", (read,)) is None
        assert list(probe.readers) == [group, f"{group}-none"]  # one Consumer per group, reused
    finally:
        probe.close()
    reader = Consumer({**settings.kafka_config(), "group.id": group, "enable.auto.commit": False})
    committed = reader.committed([TopicPartition(read, p) for p in range(3)], timeout=10)
    reader.close()
    assert [tp.offset for tp in committed] == [1, OFFSET_INVALID, OFFSET_INVALID]


def test_a_scheduled_dag_whose_run_is_overdue_shows_as_late():
    now = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
    due = lambda minutes: (now - timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")  # noqa: E731
    assert lateness({"is_paused": False, "next_dagrun_run_after": due(30)}, now) == "yes, due 30 min ago"
    assert lateness({"is_paused": False, "next_dagrun_run_after": due(5)}, now) == "no"
    assert lateness({"is_paused": False, "next_dagrun_run_after": due(-50)}, now) == "no"  # not due yet
    assert lateness({"is_paused": True, "next_dagrun_run_after": due(300)}, now) == "-"  # paused: not expected to run
    assert lateness({"is_paused": False, "next_dagrun_run_after": None}, now) == "-"  # no schedule


# Loops LagProbe.lag on one group until SIGTERM, printing each answer: run as its own process, so that a crash
# in librdkafka shows as the process's exit status instead of taking pytest down.
LAG_LOOP = """
import signal, sys, time
from cryptopipe.settings import get_settings
from ops.kafka_admin import LagProbe

group, topic = sys.argv[1], sys.argv[2]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
probe = LagProbe(get_settings().kafka_config())
while not stop:
    try:
        print("lag", probe.lag(group, (topic,)), flush=True)
    except Exception as err:  # Kafka down or coming back
        print("error", type(err).__name__, err, flush=True)
    time.sleep(0.1)
probe.close()
"""


@pytest.mark.lifecycle
def test_lag_probe_survives_a_kafka_restart(stack, settings, unique, tmp_path):
    """librdkafka #5040: an AdminClient's group-offset read answered NOT_COORDINATOR while the broker restarts
    crashed the process (`rdk:main segfault at 58`). The probe reads with the group's own Consumer instead."""
    topic, group = f"test.lag-restart-{unique}", f"test-lag-restart-{unique}"
    create_topics(settings, topic, partitions=3)
    producer = Producer(settings.kafka_config())
    for i in range(7):
        producer.produce(topic, value=b"%d" % i, partition=0)
    producer.flush(10)
    committer = Consumer({**settings.kafka_config(), "group.id": group})
    committer.commit(offsets=[TopicPartition(topic, p, 2 if p == 0 else 0) for p in range(3)], asynchronous=False)
    committer.close()
    answer = f"lag {{'{topic}': 5}}"
    log = tmp_path / "lag-loop.log"
    with open(log, "w") as out:
        loop = subprocess.Popen([sys.executable, "-c", LAG_LOOP, group, topic], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: answer in log.read_text(), 60, "the probe's first answer")
        restart_service(stack, "kafka", down_s=10)
        after = len(log.read_text())
        try:
            wait_for(lambda: answer in log.read_text()[after:] or loop.poll() is not None, 120,
                     "the probe's answer after the restart")
        except AssertionError as err:
            raise AssertionError(f"{err}; the probe printed since:\n{log.read_text()[after:][-3000:]}") from None
        assert loop.poll() is None, f"the probe exited with {loop.returncode}:\n{log.read_text()[-3000:]}"
    finally:
        if loop.poll() is None:
            loop.terminate()
        code = loop.wait(60)
    assert code == 0, f"the probe exited with {code}:\n{log.read_text()[-3000:]}"
