"""The source's producer and the cursors it moves: a symbol's cursor (where the source resumes, and what it
reports) only passes trades the broker acknowledged, and after a failed delivery the fetch position goes
back to what Kafka really holds.

A record the broker refuses (INVALID_TIMESTAMP, RECORD_TOO_LARGE, ...) fails the whole produce batch of its
partition, so after a failure each failed trade is sent again alone: the ones that go through were only caught in
the batch; the one the broker still refuses goes to `crypto.dlq.source` with the broker's error, and the cursor
moves on past it. Nothing is lost, nothing is written twice, and no record can stall the source.

Order needs one more step. After a refused batch, librdkafka sends the partition's later batches (already queued
or in flight) under a new epoch, and they land before the refused batch's trades are sent again. So a trade the
broker may refuse, one whose timestamp is near or past the topic's bounds (message.timestamp.after.max.ms,
before.max.ms, read from the topic) or whose size is near max.message.bytes, is sent alone: after everything
queued is acknowledged, and with nothing queued behind it until its own answer is in. Once a symbol's delivery
failed, nothing more of it is queued until recover()."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from cryptopipe.retry import retrying
from cryptopipe.run import Counters
from cryptopipe.settings import Settings
from functions.binance_source.resume import newest_agg_ids
from functions.binance_source.schedule import SymbolState

log = logging.getLogger("binance_source")

# What reading the topic back raises while Kafka is away or the topic is not there yet (resume.newest_agg_ids).
KAFKA_AWAY = (KafkaException, TimeoutError, RuntimeError, LookupError)
# The broker's refusals of a record itself: sent again alone, it is refused again, whatever the broker's state.
# (Other delivery errors, an ACL taken away or a topic deleted, refuse every record: those are retried.)
REFUSED_RECORD = frozenset({KafkaError.INVALID_TIMESTAMP, KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
                            KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE})


# Room for a record's and its batch's headers next to the value, against max.message.bytes.
RECORD_OVERHEAD = 512


@dataclass(frozen=True)
class TopicLimits:
    """What the topic refuses of a record itself (None: no bound)."""
    after_ms: int | None = None  # message.timestamp.after.max.ms: how far ahead of the broker's clock
    before_ms: int | None = None  # message.timestamp.before.max.ms: how far behind it
    max_bytes: int | None = None  # max.message.bytes

    def risky(self, trade_time: int, size: int, now_ms: int, margin_ms: int) -> bool:
        """The broker may refuse it, its clock `margin_ms` away from ours either way."""
        return ((self.after_ms is not None and trade_time > now_ms + self.after_ms - margin_ms)
                or (self.before_ms is not None and trade_time < now_ms - self.before_ms + margin_ms)
                or (self.max_bytes is not None and size + RECORD_OVERHEAD > self.max_bytes))


def topic_limits(client: dict[str, str], topic: str, timeout: float = 10.0) -> TopicLimits:
    """The topic's limits on a record, as the broker applies them (its defaults included)."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = AdminClient(client)  # held until the answer is in: a collected client fails its futures
    future = admin.describe_configs([resource], request_timeout=timeout)[resource]
    configs = {name: entry.value for name, entry in future.result(timeout).items()}

    def number(name: str) -> int | None:
        return int(configs[name]) if configs.get(name) is not None else None

    # With LogAppendTime the broker stamps each record itself and takes any timestamp.
    stamps = configs.get("message.timestamp.type", "CreateTime") == "CreateTime"
    return TopicLimits(after_ms=number("message.timestamp.after.max.ms") if stamps else None,
                       before_ms=number("message.timestamp.before.max.ms") if stamps else None,
                       max_bytes=number("max.message.bytes"))


class NotDelivered(Exception):
    """A trade sent alone failed with an error that is not about the record itself."""


def trades_producer(settings: Settings) -> Producer:
    return Producer({
        **settings.kafka_config("source"),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "batch.num.messages": 10_000,
        # Retry until Kafka is back, however long: with a timeout, the oldest trades of a long outage would
        # fail while later ones got through, and resuming after the newest would skip the failed ones.
        "message.timeout.ms": 0,
        # Java clients' key hash, so resume.partition_for finds each symbol's partition.
        "partitioner": "murmur2_random",
    })


class Delivery:
    """Produces trades of the symbols in `states` (the source's own dict) and follows their acknowledgements."""

    def __init__(self, settings: Settings, states: dict[str, SymbolState], counters: Counters, producer: Producer,
                 dead_letter: Callable[[str, bytes, str], None], stopping: Callable[[], bool] = lambda: False):
        self.s = settings
        self.states = states
        self.counters = counters
        self.producer = producer
        self.dead_letter = dead_letter  # (symbol, value, reason)
        self.stopping = stopping
        self.acked = 0  # acknowledged since the last settle(): the counter's lock costs too much per trade
        # Reading back what Kafka holds waits for Kafka, however long it is away.
        self.kafka_retry = retrying(KAFKA_AWAY, 0.5, 30.0)
        self.resend_retry = retrying((NotDelivered,), 0.5, 30.0)
        self.limits = TopicLimits()  # read with the newest trades (newest()), at the start and after a failure

    def produce(self, state: SymbolState, values: list[tuple[int, int, bytes]]) -> None:
        """Queue the trades in order; stops at a failed delivery of the symbol (recover() then resumes after
        what Kafka holds, so the caller's trades left out are fetched again)."""
        key = state.symbol.encode()
        now_ms = int(time.time() * 1000)
        for agg_id, trade_time, value in values:
            alone = self.limits.risky(trade_time, len(value), now_ms, self.s.max_clock_skew_ms)
            if alone:
                self.counters.count("sent_alone")
                log.warning("%s: agg id %d (timestamp %d, %d bytes) is near or past what %s takes; sending it alone",
                            state.symbol, agg_id, trade_time, len(value), self.s.aggtrades_topic)
                self.wait_for_kafka()
            if state.delivery_failed:
                break
            state.inflight.append((agg_id, trade_time, value))
            while True:
                try:
                    self.producer.produce(self.s.aggtrades_topic, value=value, key=key, timestamp=trade_time,
                                          on_delivery=self.on_delivery)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            if alone:
                self.wait_for_kafka()
        self.producer.poll(0)

    def on_delivery(self, err, msg) -> None:
        """Acknowledgements arrive in order per partition, and a symbol lives in one partition: the oldest
        in-flight trade of the symbol is the one acknowledged. After a failure the cursor stays before the failed
        trade until recover() has settled it."""
        state = self.states.get(msg.key().decode())
        if state is None or not state.inflight:
            return
        agg_id, trade_time, value = state.inflight.popleft()
        if err is not None:
            state.delivery_failed = True
            state.refused.append((agg_id, trade_time, value, err))
            return
        self.delivered(state, agg_id, trade_time)

    def delivered(self, state: SymbolState, agg_id: int, trade_time: int) -> None:
        if not state.delivery_failed:
            state.cursor = agg_id + 1
        state.produced += 1
        state.newest_time = max(trade_time, state.newest_time or trade_time)
        self.acked += 1

    def settle(self) -> None:
        """Add the acknowledgements since the last call to the `trades_produced` counter (callbacks run in the
        thread that polls the producer, the one that calls this)."""
        if self.acked:
            self.counters.count("trades_produced", self.acked)
            self.acked = 0

    def newest(self, symbols: list[str]) -> dict[str, int]:
        """{symbol: newest agg_id in Kafka}, and the topic's limits on a record into `limits`; waiting with
        backoff while Kafka cannot answer (SystemExit when the source is stopped meanwhile)."""
        def fail(err: Exception, attempt: int) -> None:
            if self.stopping():
                raise SystemExit(0)
            self.counters.count("kafka_unavailable")
            log.warning("cannot read the newest trades back from %s (attempt %d): %s; waiting for Kafka",
                        self.s.aggtrades_topic, attempt, err)

        def read() -> dict[str, int]:
            client = self.s.kafka_config("source")
            self.limits = topic_limits(client, self.s.aggtrades_topic)
            return newest_agg_ids(client, self.s.aggtrades_topic, symbols, self.s.max_clock_skew_ms)

        return self.kafka_retry.call_with_retry(read, fail, with_failure_count=True)

    def recover(self, state: SymbolState) -> None:
        """After a failed delivery: wait until nothing is in flight, send each failed trade again alone (into the
        dead-letter topic if the broker refuses it itself), then continue after what Kafka really holds."""
        self.wait_for_kafka()
        self.counters.count("delivery_failures")
        refused, state.refused = sorted(state.refused, key=lambda r: r[0]), []
        log.error("%s: %d deliveries failed (first: agg id %s, %s); sending each again alone", state.symbol,
                  len(refused), refused[0][0] if refused else None, refused[0][3] if refused else None)
        for agg_id, trade_time, value, _err in refused:
            self.resend(state, agg_id, trade_time, value)
        newest = self.newest([state.symbol]).get(state.symbol, -1)
        # Dead-lettered trades are not in the topic, yet everything up to the last of them is settled.
        cursor = max(newest, refused[-1][0] if refused else -1) + 1
        log.info("%s: continuing after agg id %d", state.symbol, cursor - 1)
        if cursor > 0:
            state.cursor = cursor
        state.fetch_from = state.cursor
        state.inflight.clear()
        state.delivery_failed = False

    def wait_for_kafka(self) -> None:
        """Until every queued record is delivered or has failed."""
        while (left := self.producer.flush(5)) > 0:
            log.warning("%d records still in flight; waiting for Kafka", left)
            if self.stopping():
                raise SystemExit(0)

    def resend(self, state: SymbolState, agg_id: int, trade_time: int, value: bytes) -> None:
        """One failed trade, alone in its produce request (nothing else is queued): delivered; or refused by the
        broker for what it is, and dead-lettered with the broker's error; or, for any other error, tried again
        with backoff until Kafka takes it."""
        def send_alone() -> KafkaError | None:
            outcome: list[KafkaError | None] = []
            self.producer.produce(self.s.aggtrades_topic, value=value, key=state.symbol.encode(),
                                  timestamp=trade_time, on_delivery=lambda err, _msg: outcome.append(err))
            self.wait_for_kafka()
            if outcome[0] is not None and outcome[0].code() not in REFUSED_RECORD:
                raise NotDelivered(outcome[0])
            return outcome[0]

        def fail(err: Exception, attempt: int) -> None:
            if self.stopping():
                raise SystemExit(0)
            self.counters.count("delivery_retries")
            log.error("%s: agg id %d failed again alone (attempt %d): %s; trying again", state.symbol, agg_id,
                      attempt, err)

        err = self.resend_retry.call_with_retry(send_alone, fail, with_failure_count=True)
        if err is None:
            self.delivered(state, agg_id, trade_time)
            return
        self.counters.count("refused_by_kafka")
        self.dead_letter(state.symbol, value, f"refused by Kafka: {err.name()}: {err.str()} "
                                              f"(agg id {agg_id}, timestamp {trade_time})")
        self.wait_for_kafka()
