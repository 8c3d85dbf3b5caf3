"""Every Kafka topic of the pipeline, declared once, and an idempotent `ensure_topics`.

Run `python -m cryptopipe.topics` to create missing topics and align their configs.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    extra: dict[str, str] = field(default_factory=dict)

    def configs(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy, **self.extra}


AGGTRADES = "binance.aggtrades"
CANDLES_1M = "crypto.candles-1m"
STATS_5M = "crypto.stats-5m"
ALERTS = "crypto.alerts"


def dlq(component: str) -> str:
    """The dead-letter topic of one component: crypto.dlq.<component>."""
    return f"crypto.dlq.{component}"


def dlq_headers(component: str, reason: str, **context) -> list[tuple[str, bytes]]:
    """The headers every dead-letter record carries (its value is the record as received): error.reason,
    error.component (the <component> of crypto.dlq.<component>), and error.<name> for each context value."""
    headers = [("error.reason", reason.encode()), ("error.component", component.encode())]
    return headers + [(f"error.{name}", str(value).encode()) for name, value in context.items() if value is not None]


# Components that own a dead-letter topic: the functions and one per JDBC sink connector.
DLQ_COMPONENTS = ("source", "stream", "redis-sink", "alerts", "alert-notifier", "jdbc-trades", "jdbc-candles", "jdbc-alerts", "jdbc-stats")

# Symbols are the key, so three partitions spread symbols over up to three consumers per group.
TOPICS: tuple[Topic, ...] = (
    Topic(AGGTRADES, partitions=3, retention_ms=7 * DAY_MS),
    Topic(CANDLES_1M, partitions=3, retention_ms=30 * DAY_MS),
    Topic(STATS_5M, partitions=3, retention_ms=30 * DAY_MS),
    # Keyed by the deterministic alert id: compaction keeps the newest version of each alert.
    Topic(ALERTS, partitions=1, retention_ms=90 * DAY_MS, cleanup_policy="compact,delete"),
    *(Topic(dlq(c), partitions=1, retention_ms=30 * DAY_MS) for c in DLQ_COMPONENTS),
)


def ensure_topics(admin: AdminClient, topics: tuple[Topic, ...] = TOPICS, timeout: float = 30.0) -> dict[str, str]:
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


def consumer_lag(bootstrap: str, group: str, topics: tuple[str, ...] = ()) -> dict[str, int] | None:
    """Offsets not yet committed by the group, per topic; None before its first commit unless `topics` names
    what it reads (a partition it never committed then counts from its first retained offset).

    End offset minus committed offset counts transaction markers too (the stream function writes in
    transactions), so a group that has read everything would show a lag of one or two forever: where the
    gap holds no committed record, the lag is 0."""
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition

    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    committed = {(tp.topic, tp.partition): tp.offset for tp in future.result(timeout=10).topic_partitions
                 if tp.offset >= 0}
    if not committed and not topics:
        return None
    # auto.offset.reset=earliest: a committed offset already deleted by retention must not jump to the end.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cryptopipe-lag-probe",
                         "isolation.level": "read_committed", "enable.partition.eof": True,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                if (topic, p) not in committed:
                    committed[(topic, p)] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[0]
        lag: dict[str, int] = {}
        for (topic, partition), offset in committed.items():
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
            behind = max(0, high - offset)
            if behind and only_markers(consumer, TopicPartition(topic, partition, offset)):
                behind = 0
            lag[topic] = lag.get(topic, 0) + behind
        return lag
    finally:
        consumer.close()


def only_markers(consumer, start) -> bool:
    """True when reading from `start` reaches the partition's end without a record."""
    from confluent_kafka import KafkaError

    consumer.assign([start])
    try:
        msg = consumer.poll(5)
        return msg is not None and msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF
    finally:
        consumer.unassign()


def main() -> int:
    from cryptopipe.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    admin = AdminClient({"bootstrap.servers": get_settings().kafka_bootstrap})
    for name, what in sorted(ensure_topics(admin).items()):
        print(f"  {name:<28} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
