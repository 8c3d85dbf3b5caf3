"""The notifier's commit points: records finish out of order (deliveries run in parallel), and a partition's
offset is committed only up to its first record still under way, so a crash re-reads that one."""

from __future__ import annotations

import logging
from collections import deque

from confluent_kafka import Consumer, KafkaException, TopicPartition

log = logging.getLogger("alert_notifier.offsets")


class Pending:
    """Offsets of one partition in read order. Records finish out of order (deliveries run in parallel);
    the commit point only moves past an unbroken run of finished ones."""

    def __init__(self) -> None:
        self.offsets: deque[int] = deque()
        self.finished: set[int] = set()
        self.next: int | None = None
        self.committed: int | None = None

    def add(self, offset: int) -> None:
        self.offsets.append(offset)

    def finish(self, offset: int) -> None:
        self.finished.add(offset)

    def advance(self) -> int | None:
        while self.offsets and self.offsets[0] in self.finished:
            offset = self.offsets.popleft()
            self.finished.discard(offset)
            self.next = offset + 1
        return self.next


class Offsets:
    """The Pending of each partition this consumer owns, following its rebalances."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], Pending] = {}

    def assign(self, partitions) -> None:
        for p in partitions:
            self.partitions[(p.topic, p.partition)] = Pending()

    def forget(self, partitions) -> None:
        for p in partitions:
            self.partitions.pop((p.topic, p.partition), None)

    def of(self, msg) -> Pending | None:
        """The record's partition, None when it was revoked after the record was read."""
        return self.partitions.get((msg.topic(), msg.partition()))

    def commit(self, consumer: Consumer) -> None:
        """What is finished, partition by partition; a failed commit is left to the next call."""
        offsets = []
        for (topic, partition), pending in self.partitions.items():
            nxt = pending.advance()
            if nxt is not None and nxt != pending.committed:
                offsets.append(TopicPartition(topic, partition, nxt))
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:
            log.warning("commit failed (%s); it is tried again with the next batch", err)
            return
        for tp in offsets:
            if (tp.topic, tp.partition) in self.partitions:
                self.partitions[(tp.topic, tp.partition)].committed = tp.offset
