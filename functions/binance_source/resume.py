"""Where to resume: the newest trade per symbol already in Kafka, read back from the topic itself.

Kafka is the source of truth for the cursor, so a restart after `kill -9` continues exactly after the last
trade the broker acknowledged: no gap, no duplicate.
"""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from cryptopipe import schemas


def murmur2(data: bytes) -> int:
    """Kafka's default key hash (the Java client's and librdkafka's `murmur2_random`)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length - length % 4
    rest = length % 4
    if rest >= 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


# Joined by no one and never committed to; set since a consumer needs a group (its ACL: ops/kafka_security.py).
RESUME_GROUP = "binance-source-resume"


def partition_for(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def newest_agg_ids(client: dict[str, str], topic: str, symbols: list[str], max_skew_ms: int,
                   timeout: float = 10.0) -> dict[str, int]:
    """{symbol: newest agg_id in the topic} among the records the validation contract accepts (with `max_skew_ms`
    of clock skew), for the symbols that have any; reads each symbol's partition backwards in growing chunks until
    it finds the symbol or reaches the partition's start."""
    consumer = Consumer({
        **client, "group.id": RESUME_GROUP, "enable.auto.commit": False,
        "enable.partition.eof": True, "isolation.level": "read_committed",
    })
    try:
        partitions = len(consumer.list_topics(topic, timeout=timeout).topics[topic].partitions)
        if not partitions:
            raise LookupError(f"topic {topic} has no partitions (not created yet?)")
        wanted: dict[int, set[str]] = {}
        for symbol in symbols:
            wanted.setdefault(partition_for(symbol, partitions), set()).add(symbol)
        found: dict[str, int] = {}
        for partition, names in wanted.items():
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            end, chunk = high, 1000
            while names - found.keys() and end > low:
                start = max(low, end - chunk)
                for key, agg_id in read_range(consumer, topic, partition, start, end, max_skew_ms, timeout):
                    if key in names and agg_id > found.get(key, -1):
                        found[key] = agg_id
                end, chunk = start, chunk * 4
        return found
    finally:
        consumer.close()


def read_range(consumer: Consumer, topic: str, partition: int, start: int, end: int, max_skew_ms: int,
               timeout: float):
    """(key, agg_id) of the records at offsets [start, end) of one partition."""
    consumer.assign([TopicPartition(topic, partition, start)])
    offset = start
    while offset < end:
        batch = consumer.consume(min(10_000, end - offset), timeout=timeout)
        if not batch:
            raise TimeoutError(f"reading {topic}[{partition}] at offset {offset} timed out")
        for msg in batch:
            if msg.error():
                if msg.error().code() == -191:  # _PARTITION_EOF: compaction or transaction markers
                    offset = end
                    break
                raise RuntimeError(msg.error())
            offset = msg.offset() + 1
            if msg.offset() >= end:
                break
            try:
                trade = schemas.check_trade(msg.key(), msg.value(), max_skew_ms, msg.timestamp()[1])
            except schemas.Invalid:
                # Not a valid trade (someone else's malformed record, an agg id of 2^63, a trade from the
                # future): resuming after it would skip every trade up to it. The contract is total, so no
                # record can make this raise anything else and stop the source.
                continue
            yield trade["symbol"], trade["agg_id"]
