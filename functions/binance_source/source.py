"""The Binance source: polls `GET /api/v3/aggTrades` per symbol and produces every trade to `binance.aggtrades`.

    binance-source            (console entry point; `make source` runs it)

Every trade once and in order per symbol: the cursor (where the source resumes, and what it reports) only
moves past trades the broker acknowledged, and on start it continues after the newest trade already in Kafka.
Fetching runs ahead of acknowledgements (`fetch_from`) so the network and the broker work in parallel;
a failed delivery sends the fetch position back to what Kafka really holds. Request weight stays under a share of the
limit; busy symbols are polled more often than quiet ones. Bad answers are logged, counted and sent to
`crypto.dlq.source`; nothing stops the loop but SIGTERM/SIGINT.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import Producer

from cryptopipe.run import serve, write_status
from cryptopipe.settings import Settings
from cryptopipe.topics import dlq_headers
from functions.binance_source.client import (
    AGG_TRADES_WEIGHT,
    BinanceClient,
    BinanceError,
    RateLimited,
    TransientError,
    WeightGate,
)
from functions.binance_source.resume import newest_agg_ids

log = logging.getLogger("binance_source")

DECIMAL = re.compile(r"^\d{1,24}(\.\d{1,24})?$")
MAX_SAME_FAILURE = 3  # answers in a row that fail at the same id before that id is given up


class BadTrade(ValueError):
    pass


def trade_value(symbol: str, item: object) -> tuple[int, int, bytes]:
    """(agg_id, trade_time, JSON value) of one aggTrades item, or BadTrade naming what is wrong.

    Prices and quantities are written as JSON numbers with Binance's exact digits, so no float rounding
    happens anywhere on the way to PostgreSQL's numeric columns."""
    if not isinstance(item, dict):
        raise BadTrade(f"item is {type(item).__name__}, not an object")
    missing = [k for k in ("a", "p", "q", "f", "l", "T", "m") if k not in item]
    if missing:
        raise BadTrade(f"missing field(s) {', '.join(missing)}")
    for k in ("a", "f", "l", "T"):
        if not isinstance(item[k], int) or isinstance(item[k], bool) or item[k] < 0:
            raise BadTrade(f"field {k} is {item[k]!r}, not a non-negative integer")
    for k in ("p", "q"):
        if not isinstance(item[k], str) or not DECIMAL.match(item[k]):
            raise BadTrade(f"field {k} is {item[k]!r}, not a decimal string")
    if not isinstance(item["m"], bool):
        raise BadTrade(f"field m is {item['m']!r}, not a boolean")
    if float(item["p"]) <= 0:
        raise BadTrade(f"price {item['p']} is not positive")
    if item["l"] < item["f"]:
        raise BadTrade(f"last trade id {item['l']} is before first trade id {item['f']}")
    value = (
        f'{{"symbol":"{symbol}","agg_id":{item["a"]},"price":{item["p"]},"qty":{item["q"]},'
        f'"first_trade_id":{item["f"]},"last_trade_id":{item["l"]},"trade_time":{item["T"]},'
        f'"is_buyer_maker":{"true" if item["m"] else "false"}}}'
    )
    return item["a"], item["T"], value.encode()


def parse_start_time(text: str) -> int | None:
    if not text:
        return None
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"BINANCE_START_TIME {text!r} needs a timezone, e.g. 2021-04-04T20:03:00Z")
    return int(moment.timestamp() * 1000)


@dataclass
class SymbolState:
    symbol: str
    cursor: int | None = None  # the id after the newest acknowledged trade; None until known
    fetch_from: int | None = None  # the next id to request: at or ahead of the cursor
    inflight: deque = field(default_factory=deque)  # (agg_id, trade_time) produced, not yet acknowledged
    delivery_failed: bool = False
    next_poll: float = 0.0
    last_poll: float = 0.0
    rate: float = 1.0  # trades per second, smoothed
    produced: int = 0
    newest_time: int | None = None
    failures: int = 0  # consecutive transient failures, for backoff
    stuck_at: int | None = None  # the id where the last bad answer stopped us
    stuck_count: int = 0


class BinanceSource:
    """Polls the symbols in `settings` and produces their trades until `stop()` is called."""

    def __init__(self, settings: Settings, producer: Producer | None = None):
        self.s = settings
        self.stopping = False
        self.counters: Counter = Counter()
        self.gate = WeightGate(settings.binance_weight_limit, settings.binance_weight_share,
                               settings.binance_weight_window_s)
        self.client = BinanceClient(settings.binance_base_url, self.gate, settings.binance_connect_timeout_s,
                                    settings.binance_read_timeout_s)
        self.producer = producer or Producer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "batch.num.messages": 10_000,
            # Java clients' key hash, so resume.partition_for finds each symbol's partition.
            "partitioner": "murmur2_random",
        })
        self.states: dict[str, SymbolState] = {}
        self.start_time = parse_start_time(settings.binance_start_time)
        self.delivery_errors: list[str] = []
        self.last_status = 0.0

    # ---- start ---------------------------------------------------------------------------------

    def setup(self) -> None:
        """Check the symbols against exchangeInfo and find each one's cursor."""
        info = self.call_with_retry("/api/v3/exchangeInfo", {}, 20)
        listed = {s["symbol"]: s.get("status") for s in info.get("symbols", [])}
        for rl in info.get("rateLimits", []):
            if rl.get("rateLimitType") == "REQUEST_WEIGHT" and rl.get("interval") == "MINUTE":
                if rl["limit"] < self.gate.limit:
                    log.info("exchange limit is %d weight/min; using it instead of %d", rl["limit"], self.gate.limit)
                    self.gate.limit = rl["limit"]
        for symbol in self.s.symbols:
            if symbol not in listed:
                log.error("symbol %s is not listed by %s/api/v3/exchangeInfo: skipping it", symbol, self.s.binance_base_url)
                self.counters["unknown_symbols"] += 1
            else:
                self.states[symbol] = SymbolState(symbol)
        if not self.states:
            raise SystemExit("error: none of BINANCE_SYMBOLS is listed by the exchange; nothing to do")
        newest = newest_agg_ids(self.s.kafka_bootstrap, self.s.source_topic, list(self.states))
        for symbol, state in self.states.items():
            if symbol in newest:
                state.cursor = state.fetch_from = newest[symbol] + 1
                log.info("%s: resuming after agg id %d found in %s", symbol, newest[symbol], self.s.source_topic)

    def call_with_retry(self, path: str, params: dict, weight: int) -> object:
        attempt = 0
        while not self.stopping:
            try:
                return self.client.get(path, params, weight)
            except (TransientError, RateLimited) as err:
                attempt += 1
                log.warning("%s failed (attempt %d): %s", path, attempt, err)
                time.sleep(self.backoff(attempt))
        raise SystemExit(0)

    def find_start(self, state: SymbolState) -> None:
        """A symbol with no history starts at the configured time, or after the newest trade."""
        params = {"symbol": state.symbol, "limit": 1}
        if self.start_time is not None:
            params["startTime"] = self.start_time
        rows = self.fetch(state, params)
        if not rows:
            if rows is not None:
                state.next_poll = time.monotonic() + self.s.source_max_poll_interval_s
            return
        try:
            agg_id = trade_value(state.symbol, rows[0])[0]
        except BadTrade as err:
            self.counters["bad_items"] += 1
            self.dead_letter(state.symbol, json.dumps(rows[0]).encode(), str(err))
            return
        state.cursor = state.fetch_from = agg_id if self.start_time is not None else agg_id + 1
        log.info("%s: no history in Kafka; starting at agg id %d", state.symbol, state.cursor)

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        log.info("polling %s from %s (weight budget %d of %d per %g s)", ", ".join(self.states),
                 self.s.binance_base_url, self.gate.budget, self.gate.limit, self.gate.window_s)
        while not self.stopping and self.states:
            state = min(self.states.values(), key=lambda st: st.next_poll)
            delay = state.next_poll - time.monotonic()
            if delay > 0:
                self.producer.poll(min(delay, 0.5))
                self.maybe_report()
                continue
            self.poll_symbol(state)
            self.maybe_report()
        self.close()

    def poll_symbol(self, state: SymbolState) -> None:
        if state.cursor is None:
            self.find_start(state)
            return
        now = time.monotonic()
        if state.delivery_failed:
            self.recover(state)
        body = self.fetch(state, {"symbol": state.symbol, "fromId": state.fetch_from,
                                  "limit": self.s.binance_page_limit})
        if body is None:
            return
        got = self.take_page(state, body)
        elapsed = max(now - state.last_poll, 1e-3) if state.last_poll else None
        state.last_poll = now
        if elapsed is not None:
            state.rate = 0.7 * state.rate + 0.3 * (got / elapsed)
        full = len(body) >= self.s.binance_page_limit
        state.next_poll = now if (full or got < len(body)) else now + self.interval(state)

    def fetch(self, state: SymbolState, params: dict) -> list | None:
        """One aggTrades request; None after a failure (logged, counted, next poll scheduled)."""
        now = time.monotonic()
        try:
            body = self.client.get("/api/v3/aggTrades", params, AGG_TRADES_WEIGHT)
            if not isinstance(body, list):
                self.dead_letter(state.symbol, json.dumps(body).encode(), "answer is not a JSON list")
                raise TransientError(f"answer is a {type(body).__name__}, not a list")
        except RateLimited as err:
            self.counters[f"http_{err.status}"] += 1
            log.warning("%s: rate limited, sending nothing for %g s: %s", state.symbol, err.retry_after, err)
            return None
        except TransientError as err:
            self.counters["transient_errors"] += 1
            if err.body is not None:
                self.dead_letter(state.symbol, err.body[:100_000], "non-JSON body")
            state.failures += 1
            state.next_poll = now + self.backoff(state.failures)
            log.warning("%s: %s; retry in %.1f s", state.symbol, err, state.next_poll - now)
            return None
        except BinanceError as err:
            self.counters["binance_errors"] += 1
            if err.code == -1121:
                log.error("%s: the exchange says invalid symbol; dropping it", state.symbol)
                del self.states[state.symbol]
                return None
            state.failures += 1
            state.next_poll = now + self.backoff(state.failures)
            log.error("%s: %s; retry in %.1f s", state.symbol, err, state.next_poll - now)
            return None
        state.failures = 0
        return body

    def take_page(self, state: SymbolState, items: list) -> int:
        """Produce the contiguous run of good trades at the fetch position; stop at a bad item or a hole.
        Returns how many were handed to the producer."""
        expected = state.fetch_from
        good: list[tuple[int, int, bytes]] = []
        problem, skip_to = None, None
        for item in items:
            try:
                agg_id, trade_time, value = trade_value(state.symbol, item)
            except BadTrade as err:
                self.counters["bad_items"] += 1
                self.dead_letter(state.symbol, json.dumps(item).encode(), str(err))
                problem, skip_to = f"malformed item at id {expected}: {err}", expected + 1
                break
            if agg_id < expected:
                self.counters["ids_backwards"] += 1
                log.warning("%s: id %d is behind the cursor %d (duplicate or out of order); skipped",
                            state.symbol, agg_id, expected)
                continue
            if agg_id > expected:
                self.counters["holes"] += 1
                problem, skip_to = f"hole: expected id {expected}, got {agg_id}", agg_id
                break
            good.append((agg_id, trade_time, value))
            expected += 1
        if problem is not None:
            expected = self.handle_stuck(state, expected, skip_to, problem)
        self.produce(state, good)
        state.fetch_from = expected
        return len(good)

    def handle_stuck(self, state: SymbolState, expected: int, skip_to: int, problem: str) -> int:
        """Refetch from the id where the page went bad; after MAX_SAME_FAILURE bad answers at the same id,
        move on to `skip_to` (the bad item is in the dead-letter topic, or the exchange never had those ids)."""
        if state.stuck_at == expected:
            state.stuck_count += 1
        else:
            state.stuck_at, state.stuck_count = expected, 1
        if state.stuck_count >= MAX_SAME_FAILURE:
            self.counters["ids_given_up"] += 1
            log.error("%s: %s, %d times in a row; giving up ids %d..%d and moving on", state.symbol, problem,
                      state.stuck_count, expected, skip_to - 1)
            state.stuck_at = None
            return skip_to
        log.warning("%s: %s; refetching from id %d", state.symbol, problem, expected)
        return expected

    def produce(self, state: SymbolState, values: list[tuple[int, int, bytes]]) -> None:
        key = state.symbol.encode()
        for agg_id, trade_time, value in values:
            state.inflight.append((agg_id, trade_time))
            while True:
                try:
                    self.producer.produce(self.s.source_topic, value=value, key=key, timestamp=trade_time,
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
            self.delivery_errors.append(str(err))
            return
        state.cursor = agg_id + 1
        state.produced += 1
        state.newest_time = trade_time
        self.counters["trades_produced"] += 1

    def recover(self, state: SymbolState) -> None:
        """After a failed delivery: wait for what is in flight, then continue after what Kafka really holds."""
        self.producer.flush(30)
        self.counters["delivery_failures"] += 1
        newest = newest_agg_ids(self.s.kafka_bootstrap, self.s.source_topic, [state.symbol])
        log.error("%s: delivery failed (%s); continuing after agg id %s, the newest in Kafka", state.symbol,
                  "; ".join(self.delivery_errors[:3]), newest.get(state.symbol))
        self.delivery_errors.clear()
        if state.symbol in newest:
            state.cursor = newest[state.symbol] + 1
        state.fetch_from = state.cursor
        state.inflight.clear()
        state.delivery_failed = False

    def dead_letter(self, symbol: str, value: bytes, reason: str) -> None:
        log.warning("%s: to %s: %s", symbol, self.s.source_dlq_topic, reason)
        self.counters["dead_letters"] += 1
        self.producer.produce(self.s.source_dlq_topic, value=value, key=symbol.encode(), headers=dlq_headers(
            "source", reason, symbol=symbol, base_url=self.s.binance_base_url))

    # ---- scheduling ----------------------------------------------------------------------------

    def interval(self, state: SymbolState) -> float:
        """The weight budget as polls per second: every symbol gets the floor rate (one poll per maximum
        interval), and the rest is shared in proportion to the square root of each symbol's trade rate.
        Busy symbols are polled more often, but not so much more that quiet ones fall behind: a trade
        waits about one poll interval whatever the symbol's rate, so lag is evened out, not rates."""
        polls_per_s = self.gate.budget / self.gate.window_s / AGG_TRADES_WEIGHT
        floor = 1.0 / self.s.source_max_poll_interval_s
        spare = polls_per_s - floor * len(self.states)
        if spare <= 0:  # more symbols than the budget can poll at the floor rate: share it evenly
            return max(self.s.source_min_poll_interval_s, len(self.states) / polls_per_s)
        else:
            weights = {st.symbol: math.sqrt(max(st.rate, 0.0)) for st in self.states.values()}
            share = floor + spare * weights[state.symbol] / (sum(weights.values()) or 1.0)
        return min(self.s.source_max_poll_interval_s, max(self.s.source_min_poll_interval_s, 1.0 / share))

    def backoff(self, attempt: int) -> float:
        return min(30.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)

    # ---- reporting and stop ----------------------------------------------------------------------

    def status(self) -> dict:
        now_ms = int(time.time() * 1000)
        return {
            "updated_at": now_ms,
            "base_url": self.s.binance_base_url,
            "weight_used": self.gate.used,
            "weight_budget": self.gate.budget,
            "weight_limit": self.gate.limit,
            "counters": dict(self.counters),
            "symbols": {
                st.symbol: {"cursor": st.cursor, "produced": st.produced, "rate_per_s": round(st.rate, 2),
                            "lag_ms": now_ms - st.newest_time if st.newest_time else None}
                for st in self.states.values()
            },
        }

    def maybe_report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_status < self.s.source_status_interval_s:
            return
        self.last_status = now
        status = self.status()
        write_status(self.s, "source", status)
        log.info("produced %d trades; weight %d/%d; %s", self.counters["trades_produced"],
                 status["weight_used"], status["weight_budget"],
                 ", ".join(f"{s} lag {v['lag_ms'] / 1000:.1f}s" if v["lag_ms"] is not None else f"{s} no trade yet"
                           for s, v in status["symbols"].items()))

    def stop(self, *_args) -> None:
        self.stopping = True
        self.gate.stopping.set()

    def close(self) -> None:
        self.producer.flush(30)
        self.client.close()
        self.maybe_report(force=True)
        log.info("stopped; counters: %s", dict(self.counters))


def main() -> int:
    return serve(BinanceSource)


if __name__ == "__main__":
    sys.exit(main())
