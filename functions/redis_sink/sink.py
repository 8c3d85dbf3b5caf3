"""The Redis sink: latest prices and candles per symbol, for dashboards and APIs that need them now.

    redis-sink            (console entry point; `make redis-sink` runs it)

Per symbol it keeps
- `price:<SYMBOL>`   hash: price, trade_time (epoch ms), agg_id, updated_at, stale (0/1)
- `candle:<SYMBOL>`  hash: the current 1-minute candle (the fields of crypto.candles-1m)
- `prices:<SYMBOL>`  list: the most recent trades as "price@trade_time", newest first
and publishes every new price on the channel `prices:<SYMBOL>`.

A write lands only when it is newer in event time than what Redis holds (a Lua script decides, atomically),
so a replayed or late record never overwrites a newer price. Records are read in batches and each batch is
one pipeline; offsets are committed only after Redis accepted the batch, and while Redis is down the same
batch is retried with backoff: nothing is lost (at-least-once, made harmless by the newer-only writes).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections import Counter

import redis
from confluent_kafka import Consumer, Producer

from cryptopipe.run import serve, write_status
from cryptopipe.settings import Settings
from cryptopipe.topics import dlq_headers

log = logging.getLogger("redis_sink")

# KEYS: price hash, history list. ARGV: price, trade_time, agg_id, now_ms, history length, channel,
# then the batch's older trades of the symbol as price@time pairs for the history (oldest first).
PRICE_SCRIPT = """
local t, id = tonumber(ARGV[2]), tonumber(ARGV[3])
local cur_t = tonumber(redis.call('HGET', KEYS[1], 'trade_time') or '-1')
local cur_id = tonumber(redis.call('HGET', KEYS[1], 'agg_id') or '-1')
if cur_t > t or (cur_t == t and cur_id >= id) then return 0 end
for i = 7, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
redis.call('LPUSH', KEYS[2], ARGV[1] .. '@' .. ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
redis.call('HSET', KEYS[1], 'price', ARGV[1], 'trade_time', ARGV[2], 'agg_id', ARGV[3], 'updated_at', ARGV[4],
           'stale', '0')
redis.call('PUBLISH', ARGV[6], '{"price":' .. ARGV[1] .. ',"trade_time":' .. ARGV[2] .. ',"agg_id":' .. ARGV[3] .. '}')
return 1
"""

# KEYS: candle hash. ARGV: window_start, trade_count, then field/value pairs. Newer = a later window, or
# the same window with at least as many trades (updates of one window only grow).
CANDLE_SCRIPT = """
local ws, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local cur_ws = tonumber(redis.call('HGET', KEYS[1], 'window_start') or '-1')
local cur_n = tonumber(redis.call('HGET', KEYS[1], 'trade_count') or '-1')
if cur_ws > ws or (cur_ws == ws and cur_n > n) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""

CANDLE_FIELDS = ("symbol", "window_start", "window_end", "open", "high", "low", "close", "volume",
                 "quote_volume", "trade_count", "vwap")


class RedisSink:
    """setup() connects and checks; write(batch) is one pipeline; run() loops until stop()."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.stopping = False
        self.counters: Counter = Counter()
        self.last_seen: dict[str, float] = {}  # symbol -> wall time of its last trade, for staleness
        self.stale: set[str] = set()
        self.last_report = 0.0
        self.consumer: Consumer | None = None
        self.redis: redis.Redis | None = None

    def setup(self) -> None:
        self.redis = redis.Redis.from_url(self.s.redis_url, socket_timeout=5, socket_connect_timeout=3)
        self.price_script = self.redis.register_script(PRICE_SCRIPT)
        self.candle_script = self.redis.register_script(CANDLE_SCRIPT)
        self.consumer = Consumer({
            "bootstrap.servers": self.s.kafka_bootstrap,
            "group.id": self.s.redis_sink_group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 5,
        })
        self.consumer.subscribe([self.s.redis_trades_topic, self.s.redis_candles_topic])
        self.dlq = Producer({"bootstrap.servers": self.s.kafka_bootstrap, "enable.idempotence": True})

    # ---- one batch -----------------------------------------------------------------------------

    def prepare(self, msgs: list) -> tuple[dict[str, list[dict]], dict[str, dict]]:
        """Trades per symbol in event order, and the newest candle update per symbol; bad records to the DLQ."""
        trades: dict[str, list[dict]] = {}
        candles: dict[str, dict] = {}
        for msg in msgs:
            try:
                value = json.loads(msg.value(), parse_float=str)
                if msg.topic() == self.s.redis_trades_topic:
                    trade = {"symbol": str(value["symbol"]), "price": str(value["price"]),
                             "trade_time": int(value["trade_time"]), "agg_id": int(value["agg_id"])}
                    trades.setdefault(trade["symbol"], []).append(trade)
                else:
                    candle = {k: value[k] for k in CANDLE_FIELDS}
                    key = candle["symbol"]
                    old = candles.get(key)
                    if old is None or (candle["window_start"], candle["trade_count"]) >= (
                            old["window_start"], old["trade_count"]):
                        candles[key] = candle
            except (ValueError, KeyError, TypeError) as err:
                self.counters["bad_records"] += 1
                log.warning("bad record %s[%d]@%d to %s: %r", msg.topic(), msg.partition(), msg.offset(),
                            self.s.redis_dlq_topic, err)
                self.dlq.produce(self.s.redis_dlq_topic, value=msg.value(), key=msg.key(), headers=dlq_headers(
                    "redis-sink", repr(err), topic=msg.topic(), partition=msg.partition(), offset=msg.offset()))
        for rows in trades.values():
            rows.sort(key=lambda t: (t["trade_time"], t["agg_id"]))
        return trades, candles

    def write(self, trades: dict[str, list[dict]], candles: dict[str, dict]) -> None:
        """One pipeline for the whole batch: per symbol, its newest trade (with the others for the history)
        and its newest candle, each through the newer-only script."""
        now_ms = str(int(time.time() * 1000))
        pipe = self.redis.pipeline(transaction=False)
        history = self.s.redis_history_length
        for symbol, rows in trades.items():
            newest = rows[-1]
            older = [f"{t['price']}@{t['trade_time']}" for t in rows[-history:-1]]
            self.price_script(keys=[f"price:{symbol}", f"prices:{symbol}"], client=pipe, args=[
                newest["price"], newest["trade_time"], newest["agg_id"], now_ms, history, f"prices:{symbol}",
                *older])
        for symbol, candle in candles.items():
            fields = [x for k in CANDLE_FIELDS for x in (k, candle[k])]
            self.candle_script(keys=[f"candle:{symbol}"], args=[candle["window_start"], candle["trade_count"], *fields],
                               client=pipe)
        results = pipe.execute()
        self.counters["price_writes"] += sum(results[: len(trades)])
        self.counters["stale_skips"] += len(trades) - sum(results[: len(trades)])

    def write_with_retry(self, trades, candles) -> None:
        attempt = 0
        while True:
            try:
                self.write(trades, candles)
                return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as err:
                attempt += 1
                self.counters["redis_errors"] += 1
                delay = min(10.0, 0.2 * 2 ** attempt) * random.uniform(0.5, 1.5)
                log.warning("Redis unavailable (%s); batch of %d symbols kept, retry %d in %.1f s", err,
                            len(trades) + len(candles), attempt, delay)
                if self.stopping:
                    raise
                time.sleep(delay)

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        log.info("reading %s and %s as group %s into %s", self.s.redis_trades_topic, self.s.redis_candles_topic,
                 self.s.redis_sink_group, self.s.redis_url)
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
                    self.consumer.commit(asynchronous=False)
                    self.counters["records"] += len(good)
                    now = time.time()
                    for symbol in trades:
                        self.last_seen[symbol] = now
                        self.stale.discard(symbol)
                self.dlq.poll(0)
                self.mark_stale()
                self.report()
        finally:
            self.consumer.close()
            self.dlq.flush(10)
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
        now = time.monotonic()
        if not force and now - self.last_report < 5:
            return
        self.last_report = now
        write_status(self.s, "redis-sink", {"updated_at": int(time.time() * 1000), "counters": dict(self.counters),
                                            "stale": sorted(self.stale)})
        log.info("counters: %s", dict(self.counters))

    def stop(self, *_args) -> None:
        self.stopping = True


def main() -> int:
    return serve(RedisSink)


if __name__ == "__main__":
    sys.exit(main())
