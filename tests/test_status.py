"""`make status` for the operator on call: dead-letter depth, consumer lag and data freshness, checked against
numbers computed here from Kafka and PostgreSQL directly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import psycopg2
from confluent_kafka import Consumer, Producer, TopicPartition

from cryptopipe.settings import ROOT
from ops.dag_schedule import lateness
from ops.kafka_admin import consumer_lag

from .helpers import cells, create_topics


def status(env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "ops.status"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return result.stdout


def test_status_shows_dlq_depth_lag_and_freshness(stack, settings, unique):
    # A consumer group of our own, moved in as the Redis sink's group for this call, 5 records behind.
    topic, group = f"test.status-{unique}", f"test-status-{unique}"
    create_topics(settings, topic, partitions=1)
    producer = Producer(settings.kafka_config())
    for i in range(7):
        producer.produce(topic, value=b"x%d" % i)
    producer.flush(10)
    consumer = Consumer({**settings.kafka_config(), "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    consumer.close()
    # Topic settings moved for this test: `make up`'s prepare step creates the topics under the names in
    # force, and status lists those; one record in the moved stream dead-letter topic, so its depth is not 0.
    moved = {"CANDLES_TOPIC": f"test.candles-{unique}", "DLQ_TOPIC_PREFIX": f"test.{unique}.dlq."}
    prepared = subprocess.run([sys.executable, "-m", "ops.stack", "prepare"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**os.environ, **moved})
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert f"test.candles-{unique}" in prepared.stdout and f"test.{unique}.dlq.stream" in prepared.stdout
    producer.produce(f"test.{unique}.dlq.stream", value=b"{not json", headers=[("error.reason", b"test_status")])
    producer.flush(10)
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
    assert consumer_lag(settings.kafka_config(), group) is None  # nothing committed yet
    assert consumer_lag(settings.kafka_config(), group, (topic,)) == {topic: 8}  # everything is ahead
    probe.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)  # read all six records
    assert consumer_lag(settings.kafka_config(), group) == {topic: 0}
    probe.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)  # the second batch unread
    assert consumer_lag(settings.kafka_config(), group)[topic] > 0
    probe.close()


def test_a_scheduled_dag_whose_run_is_overdue_shows_as_late():
    now = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
    due = lambda minutes: (now - timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")  # noqa: E731
    assert lateness({"is_paused": False, "next_dagrun_run_after": due(30)}, now) == "yes, due 30 min ago"
    assert lateness({"is_paused": False, "next_dagrun_run_after": due(5)}, now) == "no"
    assert lateness({"is_paused": False, "next_dagrun_run_after": due(-50)}, now) == "no"  # not due yet
    assert lateness({"is_paused": True, "next_dagrun_run_after": due(300)}, now) == "-"  # paused: not expected to run
    assert lateness({"is_paused": False, "next_dagrun_run_after": None}, now) == "-"  # no schedule
