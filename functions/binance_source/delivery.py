"""The source's producer and the cursors it moves: a symbol's cursor (where the source resumes, and what it
reports) only passes trades the broker acknowledged, and after a failed delivery the fetch position goes
back to what Kafka really holds."""

from __future__ import annotations

import logging
from typing import Callable

from confluent_kafka import KafkaException, Producer

from cryptopipe.retry import retrying
from cryptopipe.run import Counters
from cryptopipe.settings import Settings
from functions.binance_source.resume import newest_agg_ids
from functions.binance_source.schedule import SymbolState

log = logging.getLogger("binance_source")

# What reading the topic back raises while Kafka is away or the topic is not there yet (resume.newest_agg_ids).
KAFKA_AWAY = (KafkaException, TimeoutError, RuntimeError, LookupError)


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
                 stopping: Callable[[], bool] = lambda: False):
        self.s = settings
        self.states = states
        self.counters = counters
        self.producer = producer
        self.stopping = stopping
        self.errors: list[str] = []
        self.acked = 0  # acknowledged since the last settle(): the counter's lock costs too much per trade
        # Reading back what Kafka holds waits for Kafka, however long it is away.
        self.kafka_retry = retrying(KAFKA_AWAY, 0.5, 30.0)

    def produce(self, state: SymbolState, values: list[tuple[int, int, bytes]]) -> None:
        key = state.symbol.encode()
        for agg_id, trade_time, value in values:
            state.inflight.append((agg_id, trade_time))
            while True:
                try:
                    self.producer.produce(self.s.aggtrades_topic, value=value, key=key, timestamp=trade_time,
                                          on_delivery=self.on_delivery)
                    break
                except BufferError:
                    self.producer.poll(0.05)
        self.producer.poll(0)

    def on_delivery(self, err, msg) -> None:
        """Acknowledgements arrive in order per partition, and a symbol lives in one partition: the oldest
        in-flight trade of the symbol is the one acknowledged."""
        state = self.states.get(msg.key().decode())
        if state is None or not state.inflight:
            return
        agg_id, trade_time = state.inflight.popleft()
        if err is not None or state.delivery_failed:
            state.delivery_failed = True
            self.errors.append(str(err))
            return
        state.cursor = agg_id + 1
        state.produced += 1
        state.newest_time = trade_time
        self.acked += 1

    def settle(self) -> None:
        """Add the acknowledgements since the last call to the `trades_produced` counter (callbacks run in the
        thread that polls the producer, the one that calls this)."""
        if self.acked:
            self.counters.count("trades_produced", self.acked)
            self.acked = 0

    def newest(self, symbols: list[str]) -> dict[str, int]:
        """{symbol: newest agg_id in Kafka}, waiting with backoff while Kafka cannot answer (SystemExit when
        the source is stopped meanwhile)."""
        def fail(err: Exception, attempt: int) -> None:
            if self.stopping():
                raise SystemExit(0)
            self.counters.count("kafka_unavailable")
            log.warning("cannot read the newest trades back from %s (attempt %d): %s; waiting for Kafka",
                        self.s.aggtrades_topic, attempt, err)

        return self.kafka_retry.call_with_retry(
            lambda: newest_agg_ids(self.s.kafka_config("source"), self.s.aggtrades_topic, symbols), fail,
            with_failure_count=True)

    def recover(self, state: SymbolState) -> None:
        """After a failed delivery: wait until nothing is in flight (delivered, or failed after the producer's
        message.timeout.ms), then continue after what Kafka really holds."""
        while (left := self.producer.flush(5)) > 0:
            log.warning("%d records still in flight; waiting for Kafka", left)
            if self.stopping():
                raise SystemExit(0)
        self.counters.count("delivery_failures")
        newest = self.newest([state.symbol])
        log.error("%s: delivery failed (%s); continuing after agg id %s, the newest in Kafka", state.symbol,
                  "; ".join(self.errors[:3]), newest.get(state.symbol))
        self.errors.clear()
        if state.symbol in newest:
            state.cursor = newest[state.symbol] + 1
        state.fetch_from = state.cursor
        state.inflight.clear()
        state.delivery_failed = False
