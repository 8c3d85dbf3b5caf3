"""The Redis sink: latest prices and candles per symbol, for dashboards and APIs that need them now.

    redis-sink            (console entry point; `make redis-sink` runs it)

Per symbol it keeps
- `price:<SYMBOL>`   hash: price, trade_time (epoch ms), agg_id, updated_at, stale (0/1)
- `candle:<SYMBOL>`  hash: the current 1-minute candle (the fields of crypto.candles-1m)
- `prices:<SYMBOL>`  list: the most recent trades as "price@trade_time", newest first
and publishes every new price on the channel `prices:<SYMBOL>`.

A write lands only when it is newer in event time than what Redis holds (a Lua script decides, atomically),
so a replayed or late record never overwrites a newer price. Records are read in batches and each batch is
one pipeline; offsets are committed only after Redis accepted the batch and the broker has its dead letters,
and while Redis is down the same batch is retried with backoff: nothing is lost (at-least-once, made
harmless by the newer-only writes).
"""

from __future__ import annotations

import logging
import sys
import time

import redis
from confluent_kafka import Consumer

from cryptopipe.dlq import DeadLetters
from cryptopipe.retry import RedisCalls
from cryptopipe.run import Counters, serve
from cryptopipe.settings import Settings
from functions.redis_sink.writes import Writer, split

log = logging.getLogger("redis_sink")

COMPONENT = "redis-sink"


class RedisSink:
    """setup() connects and checks; write(batch) is one pipeline; run() loops until stop()."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.stopping = False
        self.counters = Counters(settings, COMPONENT, log)
        self.last_seen: dict[str, float] = {}  # symbol -> wall time of its last trade, for staleness
        self.stale: set[str] = set()
        self.consumer: Consumer | None = None
        self.redis: redis.Redis | None = None
        self.calls = RedisCalls(self.counters, log, lambda: self.stopping)

    def setup(self) -> None:
        self.redis = redis.Redis.from_url(self.s.redis_url(COMPONENT), socket_timeout=5, socket_connect_timeout=3)
        self.writer = Writer(self.redis, self.s.redis_history_length)
        self.consumer = Consumer({
            **self.s.kafka_config("redis-sink"),
            "group.id": self.s.redis_sink_group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 5,
        })
        self.consumer.subscribe([self.s.aggtrades_topic, self.s.candles_topic])
        self.dead_letters = DeadLetters(self.s, COMPONENT, self.counters)

    # ---- one batch -----------------------------------------------------------------------------

    def prepare(self, msgs: list) -> tuple[dict[str, list[dict]], dict[str, dict]]:
        """Trades per symbol in event order, and the newest candle update per symbol; records the validation
        contract refuses to the DLQ."""
        return split(msgs, self.s.aggtrades_topic, self.bad_record, self.s.max_clock_skew_ms)

    def bad_record(self, msg, reason: str) -> None:
        self.counters.count("bad_records")
        log.warning("bad record %s[%d]@%d to %s: %s", msg.topic(), msg.partition(), msg.offset(),
                    self.dead_letters.topic, reason)
        self.dead_letters.send(msg.value(), msg.key(), reason, topic=msg.topic(), partition=msg.partition(),
                               offset=msg.offset())

    def write(self, trades: dict[str, list[dict]], candles: dict[str, dict]) -> None:
        """One pipeline for the whole batch: per symbol, its newest trade (with the others for the history)
        and its newest candle, each through the newer-only script."""
        started = time.monotonic()
        written = self.writer.write(trades, candles)
        self.counters.observe("write", time.monotonic() - started)
        self.counters.count("price_writes", written)
        self.counters.count("stale_skips", len(trades) - written)

    def write_with_retry(self, trades, candles) -> None:
        self.calls.call(lambda: self.write(trades, candles), f"batch of {len(trades) + len(candles)} symbols")

    def commit(self) -> bool:
        """The batch's offsets, once its dead letters are written too: a record committed but not in the
        dead-letter topic would be lost. False when stopping first (the batch is read again next start)."""
        while (left := self.dead_letters.flush(10)) > 0:
            log.warning("%d dead letters not yet written to %s; offsets not committed", left, self.dead_letters.topic)
            if self.stopping:
                return False
        self.consumer.commit(asynchronous=False)
        return True

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        log.info("reading %s and %s as group %s into Redis %s:%d", self.s.aggtrades_topic, self.s.candles_topic,
                 self.s.redis_sink_group, self.s.redis_host, self.s.redis_port)
        try:
            while not self.stopping:
                # Wait for one record, then take whatever else has already arrived: low latency when
                # quiet, big batches under load.
                first = self.consumer.poll(0.05)
                msgs = [first] + self.consumer.consume(self.s.redis_batch_size - 1, timeout=0) if first else []
                good = [m for m in msgs if m.error() is None]
                for m in msgs:
                    if m.error() is not None:
                        log.error("consumer error: %s", m.error())
                if good:
                    trades, candles = self.prepare(good)
                    self.write_with_retry(trades, candles)
                    # Only now: Redis has the batch.
                    if not self.commit():
                        break
                    self.counters.count("records", len(good))
                    now = time.time()
                    for symbol in trades:
                        self.last_seen[symbol] = now
                        self.stale.discard(symbol)
                self.dead_letters.poll(0)
                self.mark_stale()
                self.report()
        finally:
            self.consumer.close()
            self.dead_letters.flush(10)
            self.report(force=True)

    def mark_stale(self) -> None:
        """Flag symbols with no trade for REDIS_STALE_AFTER_S (wall clock) as stale in their price hash."""
        now = time.time()
        for symbol, seen in self.last_seen.items():
            if symbol not in self.stale and now - seen > self.s.redis_stale_after_s:
                try:
                    self.redis.hset(f"price:{symbol}", "stale", "1")
                except redis.RedisError:
                    return
                self.stale.add(symbol)
                log.warning("%s: no trade for %.0f s; marked stale", symbol, now - seen)

    def report(self, force: bool = False) -> None:
        self.counters.report(lambda: {"stale": sorted(self.stale)}, force=force)

    def stop(self, *_args) -> None:
        self.stopping = True


def main() -> int:
    return serve(RedisSink, metrics=True)


if __name__ == "__main__":
    sys.exit(main())
