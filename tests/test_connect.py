"""Kafka Connect with the real Debezium JDBC sink writing into the real PostgreSQL."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import psycopg2
import pytest
import requests
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ops import kafka_security
from ops.services import JDBC_SINK_CLASS

from .helpers import wait_for

N = 10_000
T0 = 1_617_566_591_314  # a real trade time from the BTCUSDT tape, epoch ms

# The Connect schema that types plain JSON values (no envelope) through JsonConverter's schema.content.
SCHEMA = {
    "type": "struct", "optional": False, "fields": [
        {"field": "symbol", "type": "string", "optional": False},
        {"field": "agg_id", "type": "int64", "optional": False},
        {"field": "price", "type": "bytes", "optional": False, "name": "org.apache.kafka.connect.data.Decimal",
         "version": 1, "parameters": {"scale": "8"}},
        {"field": "trade_time", "type": "int64", "optional": False, "name": "org.apache.kafka.connect.data.Timestamp",
         "version": 1},
        {"field": "is_buyer_maker", "type": "boolean", "optional": False},
    ],
}


def record(i: int) -> bytes:
    price = f"{58000 + i / 100:.8f}"  # exact decimal text, scale 8
    return (f'{{"symbol":"BTCUSDT","agg_id":{i},"price":{price},"trade_time":{T0 + i},'
            f'"is_buyer_maker":{"true" if i % 2 else "false"}}}').encode()


def test_jdbc_sink_plugin_is_installed(stack, settings):
    plugins = requests.get(f"{settings.connect_url}/connector-plugins", auth=settings.connect_auth, timeout=5).json()
    assert JDBC_SINK_CLASS in {p["class"] for p in plugins}


@pytest.fixture
def sink(settings, unique):
    """A topic, a dead-letter topic, a table the writer role may upsert into, and a JDBC sink between them."""
    topic, dlq, table, name = f"test.sink-{unique}", f"test.sink-dlq-{unique}", f"sink_test_{unique}", f"test-sink-{unique}"
    admin = AdminClient(settings.kafka_config())
    for fut in admin.create_topics([NewTopic(t, 1, 1) for t in (topic, dlq)]).values():
        fut.result()
    owner = psycopg2.connect(**settings.pg_params("owner"))
    owner.autocommit = True
    with owner.cursor() as cur:
        cur.execute(f"""CREATE TABLE {table} (symbol text, agg_id bigint, price numeric NOT NULL,
                        trade_time timestamptz NOT NULL, is_buyer_maker boolean, PRIMARY KEY (symbol, agg_id));
                        GRANT SELECT, INSERT, UPDATE ON {table} TO crypto_writer""")
    config = {
        "connector.class": JDBC_SINK_CLASS,
        "tasks.max": "1",
        "topics": topic,
        "connection.url": "${env:PG_JDBC_URL}",
        "connection.username": "crypto_writer",
        "connection.password": "${env:PG_WRITER_PASSWORD}",
        "insert.mode": "upsert",
        "primary.key.mode": "record_value",
        "primary.key.fields": "symbol,agg_id",
        "schema.evolution": "none",
        "collection.name.format": table,
        "batch.size": "2000",
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "true",
        "value.converter.schema.content": json.dumps(SCHEMA),
        "errors.tolerance": "all",
        "errors.log.enable": "true",
        "errors.deadletterqueue.topic.name": dlq,
        "errors.deadletterqueue.topic.replication.factor": "1",
        "errors.deadletterqueue.context.headers.enable": "true",
    }
    # The worker's user may read only the stack's topics: this connector's are granted, as an operator would.
    kafka_security.grant(settings, kafka_security.connector_grants(name, config))
    resp = requests.put(f"{settings.connect_url}/connectors/{name}/config", json=config, auth=settings.connect_auth, timeout=30)
    assert resp.status_code == 201, resp.text
    yield {"topic": topic, "dlq": dlq, "table": table, "name": name, "owner": owner}
    requests.delete(f"{settings.connect_url}/connectors/{name}", auth=settings.connect_auth, timeout=30)
    with owner.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
    owner.close()
    admin.delete_topics([topic, dlq])


def produce(settings, topic: str, values: list[bytes]) -> None:
    producer = Producer({**settings.kafka_config(), "enable.idempotence": True, "linger.ms": 5})
    for value in values:
        producer.produce(topic, key=b"BTCUSDT", value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def committed_to_end(settings, name: str, topic: str) -> bool:
    """The sink's consumer group has committed every record of the topic: all of it was handled."""
    consumer = Consumer({**settings.kafka_config(), "group.id": f"connect-{name}"})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
        [committed] = consumer.committed([TopicPartition(topic, 0)], timeout=5)
        return committed.offset == high
    finally:
        consumer.close()


def connector_state(settings, name: str) -> tuple[str, list[str]]:
    status = requests.get(f"{settings.connect_url}/connectors/{name}/status", auth=settings.connect_auth, timeout=5).json()
    return status["connector"]["state"], [t["state"] for t in status["tasks"]]


def test_plain_json_upserts_through_the_jdbc_sink(stack, settings, sink):
    cur = sink["owner"].cursor()
    count = lambda: cur.execute(f"SELECT count(*) FROM {sink['table']}") or cur.fetchone()[0]  # noqa: E731

    produce(settings, sink["topic"], [record(i) for i in range(N)])
    wait_for(lambda: count() == N, 180, f"{N} rows")

    # Values arrive typed: exact decimals and UTC instants, equal to a computation made here.
    cur.execute(f"SELECT sum(price), min(trade_time), max(trade_time), count(*) FILTER (WHERE is_buyer_maker) "
                f"FROM {sink['table']}")
    total, first, last, makers = cur.fetchone()
    assert total == sum(Decimal(f"{58000 + i / 100:.8f}") for i in range(N))
    assert int(first.timestamp() * 1000) == T0
    assert int(last.timestamp() * 1000) == T0 + N - 1
    assert first.utcoffset().total_seconds() == 0
    assert makers == N // 2

    # The same records again: upserts on the natural key leave exactly N rows.
    produce(settings, sink["topic"], [record(i) for i in range(N)])
    wait_for(lambda: committed_to_end(settings, sink["name"], sink["topic"]), 120, "the resent records to be handled")
    assert count() == N

    # A malformed record and one missing a required field go to the dead-letter topic; the sink keeps running.
    produce(settings, sink["topic"], [b"{not json", b'{"symbol":"BTCUSDT","agg_id":1}', record(N)])
    wait_for(lambda: count() == N + 1, 60, "the record after the bad ones")
    assert connector_state(settings, sink["name"]) == ("RUNNING", ["RUNNING"])

    consumer = Consumer({**settings.kafka_config(), "group.id": f"dlq-{sink['name']}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([sink["dlq"]])
    dead = []
    deadline = time.monotonic() + 60
    while len(dead) < 2 and time.monotonic() < deadline:
        msg = consumer.poll(1)
        if msg is not None and msg.error() is None:
            dead.append(msg)
    consumer.close()
    assert sorted(m.value() for m in dead) == sorted([b"{not json", b'{"symbol":"BTCUSDT","agg_id":1}'])
    for msg in dead:
        headers = {k: v for k, v in msg.headers()}
        assert headers["__connect.errors.topic"] == sink["topic"].encode()
        assert headers["__connect.errors.connector.name"] == sink["name"].encode()
        assert headers["__connect.errors.exception.class.name"]
        assert b"DataException" in headers["__connect.errors.exception.class.name"]
