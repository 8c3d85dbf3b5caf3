"""The real broker: records produced are all consumed, none lost, none doubled."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

N = 10_000


def test_ten_thousand_records_round_trip(stack, settings, unique):
    topic = f"test.broker-{unique}"
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result()

    failed = []
    producer = Producer({**settings.kafka_config(), "enable.idempotence": True, "acks": "all"})
    for i in range(N):
        producer.produce(topic, key=str(i % 7), value=str(i).encode(),
                         on_delivery=lambda err, msg: err and failed.append(err))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert failed == []

    consumer = Consumer({
        **settings.kafka_config(), "group.id": f"test-{unique}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(seen) < N and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1):
                assert msg.error() is None, msg.error()
                seen.append(int(msg.value()))
    finally:
        consumer.close()
    assert len(seen) == N
    assert sorted(seen) == list(range(N))
    admin.delete_topics([topic])
