"""Kafka administration for the stack's tools: create the declared topics, count records, measure lag."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from cryptopipe.topics import Topic


def records_held(consumer: Consumer, topic: str, partitions, timeout: float = 5.0) -> int:
    """Records the topic retains: per partition, its end offset minus its first retained offset."""
    held = 0
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        held += high - low
    return held


def ensure_topics(admin: AdminClient, topics: tuple[Topic, ...], timeout: float = 30.0) -> dict[str, str]:
    """Create missing topics, add missing partitions, align configs. Returns {topic: what was done}."""
    existing = admin.list_topics(timeout=timeout).topics
    done: dict[str, str] = {}
    to_create = [
        NewTopic(t.name, num_partitions=t.partitions, replication_factor=1, config=t.configs())
        for t in topics
        if t.name not in existing
    ]
    for name, fut in (admin.create_topics(to_create, request_timeout=timeout).items() if to_create else []):
        fut.result()
        done[name] = "created"
    grow = [
        NewPartitions(t.name, t.partitions)
        for t in topics
        if t.name in existing and len(existing[t.name].partitions) < t.partitions
    ]
    for name, fut in (admin.create_partitions(grow, request_timeout=timeout).items() if grow else []):
        fut.result()
        done[name] = "partitions added"
    resources = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            t.name,
            incremental_configs=[ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in t.configs().items()],
        )
        for t in topics
        if t.name in existing
    ]
    for res, fut in (admin.incremental_alter_configs(resources).items() if resources else []):
        fut.result()
        done.setdefault(res.name, "exists")
    return done


class LagProbe:
    """The clients `consumer_lag` needs, opened once for many calls (make status, the chaos run's probe):
    creating and dropping clients by the dozen while a broker restarts is what librdkafka likes least.

    A group's committed offsets are read by a Consumer carrying that group's group.id, never subscribed:
    `AdminClient.list_consumer_group_offsets` answered with NOT_COORDINATOR (a broker restarting) makes
    librdkafka dereference the consumer-group object an AdminClient does not have, and the process dies
    (librdkafka #5040, `rdk:main segfault at 58`). A never subscribed Consumer does not join its group,
    so it disturbs no member; it never commits."""

    # After a broker restart, a client sometimes stops reconnecting to its bootstrap broker and its metadata
    # requests fail with "Broker transport failure" for good, while a fresh client is answered at once (seen on
    # librdkafka 2.16.2 under load, about one restart in three, in test_lag_probe_survives_a_kafka_restart, which
    # timed out in CI): failing this long, the probe closes its clients and opens new ones.
    REOPEN_AFTER_S = 20.0

    def __init__(self, config: dict[str, str]):
        self.config = dict(config)
        self.failing_since: float | None = None
        self.open()

    def open(self) -> None:
        # auto.offset.reset=earliest: a committed offset already deleted by retention must not jump to the end.
        self.consumer = Consumer({**self.config, "group.id": "cryptopipe-lag-probe",
                                  "isolation.level": "read_committed", "enable.partition.eof": True,
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        self.readers: dict[str, Consumer] = {}  # group -> the Consumer that reads its committed offsets

    def committed(self, group: str, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offset of each partition (OFFSET_INVALID where it never committed)."""
        if group not in self.readers:
            self.readers[group] = Consumer({**self.config, "group.id": group, "enable.auto.commit": False})
        result = self.readers[group].committed(partitions, timeout=10)
        for tp in result:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return result

    def lag(self, group: str, topics: tuple[str, ...], from_start: bool = False,
            exact: bool = True) -> dict[str, int] | None:
        """Offsets of `topics` not yet committed by the group, per topic. None when the group committed
        nothing on them; with `from_start`, a partition it never committed counts from its first retained
        offset instead (and the result is never None), else such a partition is left out.

        End offset minus committed offset counts transaction markers too (the stream function writes in
        transactions), so a group that has read everything would show a lag of one or two forever: where the
        gap holds no committed record, the lag is 0. Finding that out reads the gap (up to 5 s a partition):
        without `exact`, the markers count as lag and the answer takes a few metadata calls."""
        try:
            lag = self.read_lag(group, topics, from_start, exact)
        except KafkaException:
            now = time.monotonic()
            if self.failing_since is None:
                self.failing_since = now
            elif now - self.failing_since > self.REOPEN_AFTER_S:
                self.close()
                self.open()
                self.failing_since = None
            raise
        self.failing_since = None
        return lag

    def read_lag(self, group: str, topics: tuple[str, ...], from_start: bool, exact: bool) -> dict[str, int] | None:
        consumer = self.consumer
        partitions = [TopicPartition(topic, p) for topic in topics
                      for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in (self.committed(group, partitions) if partitions else []) if tp.offset >= 0}
        if not committed and not from_start:
            return None
        if from_start:
            for tp in partitions:
                if (tp.topic, tp.partition) not in committed:
                    committed[(tp.topic, tp.partition)] = consumer.get_watermark_offsets(tp, timeout=5)[0]
        lag: dict[str, int] = {}
        for (topic, partition), offset in committed.items():
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
            behind = max(0, high - offset)
            if behind and exact and only_markers(consumer, TopicPartition(topic, partition, offset)):
                behind = 0
            lag[topic] = lag.get(topic, 0) + behind
        return lag

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.consumer.close()


def consumer_lag(config: dict[str, str], group: str, topics: tuple[str, ...],
                 from_start: bool = False) -> dict[str, int] | None:
    """LagProbe.lag for one call."""
    probe = LagProbe(config)
    try:
        return probe.lag(group, topics, from_start)
    finally:
        probe.close()


def only_markers(consumer, start) -> bool:
    """True when reading from `start` reaches the partition's end without a record."""
    consumer.assign([start])
    try:
        msg = consumer.poll(5)
        return msg is not None and msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF
    finally:
        consumer.unassign()
