"""The Binance source's REST mode: polls `GET /api/v3/aggTrades` per symbol and produces every trade to
`binance.aggtrades`. The WebSocket mode (live.py) builds on it; __main__.py picks the mode.

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
import time

from confluent_kafka import Producer

from cryptopipe.dlq import DeadLetters
from cryptopipe.retry import backoff, retrying
from cryptopipe.run import Counters
from cryptopipe.settings import Settings
from functions.binance_source.client import (
    AGG_TRADES_WEIGHT,
    BinanceClient,
    BinanceError,
    RateLimited,
    TransientError,
    WeightGate,
    exchange_info,
)
from functions.binance_source.delivery import Delivery, trades_producer
from functions.binance_source.schedule import SymbolState, due, poll_interval
from functions.binance_source.trades import BadTrade, parse_start_time, trade_value

log = logging.getLogger("binance_source")


def report_line(status: dict) -> str:
    """The log line of each status report: trades produced, weight used, each symbol's lag."""
    lags = ", ".join(f"{s} lag {v['lag_ms'] / 1000:.1f}s" if v["lag_ms"] is not None else f"{s} no trade yet"
                     for s, v in status["symbols"].items())
    return (f"produced {status['counters'].get('trades_produced', 0)} trades; weight {status['weight_used']}/"
            f"{status['weight_budget']}; {lags}")


class BinanceSource:
    """Polls the symbols in `settings` and produces their trades until `stop()` is called."""

    def __init__(self, settings: Settings, producer: Producer | None = None):
        self.s = settings
        self.stopping = False
        self.counters = Counters(settings, "source", log, settings.source_status_interval_s, report_line)
        # Present from the start, so "symbols followed, nothing produced" is a series Prometheus can see.
        self.counters.set("symbols", len(settings.symbols))
        self.counters.count("trades_produced", 0)
        self.gate = WeightGate(settings.binance_weight_limit, settings.binance_weight_share,
                               settings.binance_weight_window_s)
        self.client = BinanceClient(settings.binance_base_url, self.gate, settings.binance_connect_timeout_s,
                                    settings.binance_read_timeout_s,
                                    lambda seconds: self.counters.observe("binance_request", seconds))
        self.producer = producer or trades_producer(settings)
        self.states: dict[str, SymbolState] = {}
        self.delivery = Delivery(settings, self.states, self.counters, self.producer, self.dead_letter,
                                 lambda: self.stopping)
        self.dead_letters = DeadLetters(settings, "source", self.counters, self.producer)
        self.start_time = parse_start_time(settings.binance_start_time)
        self.backoff = backoff(0.5, 30.0)
        # Start-up requests (exchangeInfo) are retried until they succeed or the source is stopped.
        self.setup_retry = retrying((TransientError, RateLimited), 0.5, 30.0)

    # ---- start ---------------------------------------------------------------------------------

    def setup(self) -> None:
        """Check the symbols against exchangeInfo and find each one's cursor."""
        listed, limit = self.call_with_retry(self.exchange_info)
        if limit is not None and limit < self.gate.limit:
            log.info("exchange limit is %d weight/min; using it instead of %d", limit, self.gate.limit)
            self.gate.limit = limit
        for symbol in self.s.symbols:
            if symbol not in listed:
                log.error("symbol %s is not listed by %s/api/v3/exchangeInfo: skipping it", symbol,
                          self.s.binance_base_url)
                self.counters.count("unknown_symbols")
            else:
                self.states[symbol] = SymbolState(symbol)
        if not self.states:
            raise SystemExit("error: none of BINANCE_SYMBOLS is listed by the exchange; nothing to do")
        newest = self.delivery.newest(list(self.states))
        for symbol, state in self.states.items():
            if symbol in newest:
                state.cursor = state.fetch_from = newest[symbol] + 1
                log.info("%s: resuming after agg id %d found in %s", symbol, newest[symbol], self.s.aggtrades_topic)

    def exchange_info(self) -> tuple[set[str], int | None]:
        """GET exchangeInfo, read; a malformed answer is counted and retried like a failed request."""
        info = self.client.get("/api/v3/exchangeInfo", {}, 20)
        try:
            return exchange_info(info)
        except ValueError as err:
            self.counters.count("bad_exchange_info")
            raise TransientError(f"malformed exchangeInfo: {err}") from None

    def call_with_retry(self, do):
        """A start-up request, retried with backoff until it succeeds or the source is stopped."""
        def fail(err: Exception, attempt: int) -> None:
            if self.stopping:
                raise SystemExit(0)
            log.warning("start-up request failed (attempt %d): %s", attempt, err)

        return self.setup_retry.call_with_retry(do, fail, with_failure_count=True)

    def start_params(self, state: SymbolState) -> dict:
        """The request that finds where a symbol with no history in Kafka starts."""
        params = {"symbol": state.symbol, "limit": 1}
        if self.start_time is not None:
            params["startTime"] = self.start_time
        return params

    def take_start(self, state: SymbolState, rows: list) -> bool:
        """Set the cursor from the answer to `start_params`: at the configured time, or after the newest
        trade. False when there is no trade to start from yet."""
        if not rows:
            return False
        try:
            agg_id = trade_value(state.symbol, rows[0], self.s.max_clock_skew_ms)[0]
        except BadTrade as err:
            self.counters.count("bad_items")
            self.dead_letter(state.symbol, json.dumps(rows[0]).encode(), str(err))
            return False
        state.cursor = state.fetch_from = agg_id if self.start_time is not None else agg_id + 1
        log.info("%s: no history in Kafka; starting at agg id %d", state.symbol, state.cursor)
        return True

    def find_start(self, state: SymbolState) -> None:
        rows = self.fetch(state, self.start_params(state))
        if rows is not None and not self.take_start(state, rows):
            state.next_poll = time.monotonic() + self.s.source_max_poll_interval_s

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        log.info("polling %s from %s (weight budget %d of %d per %g s)", ", ".join(self.states),
                 self.s.binance_base_url, self.gate.budget, self.gate.limit, self.gate.window_s)
        try:
            while not self.stopping and self.states:
                state = due(self.states)
                delay = state.next_poll - time.monotonic()
                if delay > 0:
                    self.producer.poll(min(delay, 0.5))
                    self.report()
                    continue
                self.poll_symbol(state)
                self.report()
        finally:  # also when stopped while waiting for Kafka
            self.close()

    def poll_symbol(self, state: SymbolState) -> None:
        if state.cursor is None:
            self.find_start(state)
            return
        now = time.monotonic()
        if state.delivery_failed:
            self.delivery.recover(state)
        body = self.fetch(state, {"symbol": state.symbol, "fromId": state.fetch_from,
                                  "limit": self.s.binance_page_limit})
        if body is None:
            return
        got = self.take_page(state, body)
        state.polled(now, got)
        full = len(body) >= self.s.binance_page_limit
        state.next_poll = now if (full or got < len(body)) else now + self.interval(state)

    def fetch(self, state: SymbolState, params: dict) -> list | None:
        """One aggTrades request; None after a failure (logged, counted, next poll scheduled)."""
        try:
            body = self.get_trades(params)
        except (RateLimited, TransientError, BinanceError) as err:
            self.fetch_failed(state, err)
            return None
        state.failures = 0
        return body

    def get_trades(self, params: dict) -> list:
        """One aggTrades request; raises RateLimited, TransientError or BinanceError. Touches no state, so
        the WebSocket mode runs it in worker threads."""
        body = self.client.get("/api/v3/aggTrades", params, AGG_TRADES_WEIGHT)
        if not isinstance(body, list):
            raise TransientError(f"answer is a {type(body).__name__}, not a list", json.dumps(body).encode(),
                                 "answer is not a JSON list")
        return body

    def fetch_failed(self, state: SymbolState, err: Exception) -> None:
        """Log and count a failed request, and set when the symbol is tried again (`next_poll`)."""
        now = time.monotonic()
        if isinstance(err, RateLimited):
            self.counters.count(f"http_{err.status}")
            log.warning("%s: rate limited, sending nothing for %g s: %s", state.symbol, err.retry_after, err)
            return
        if isinstance(err, TransientError):
            self.counters.count("transient_errors")
            if err.body is not None:
                self.dead_letter(state.symbol, err.body[:100_000], err.reason)
        else:
            self.counters.count("binance_errors")
            if err.code == -1121:
                log.error("%s: the exchange says invalid symbol; dropping it", state.symbol)
                self.states.pop(state.symbol, None)
                return
        state.failures += 1
        state.next_poll = now + self.backoff.compute(state.failures)
        log.log(logging.WARNING if isinstance(err, TransientError) else logging.ERROR,
                "%s: %s; retry in %.1f s", state.symbol, err, state.next_poll - now)

    def take_page(self, state: SymbolState, items: list) -> int:
        """Produce the contiguous run of good trades at the fetch position; stop at a bad item or a hole.
        Returns how many were handed to the producer."""
        expected = state.fetch_from
        good: list[tuple[int, int, bytes]] = []
        problem, skip_to = None, None
        for item in items:
            try:
                agg_id, trade_time, value = trade_value(state.symbol, item, self.s.max_clock_skew_ms)
            except BadTrade as err:
                self.counters.count("bad_items")
                self.dead_letter(state.symbol, json.dumps(item).encode(), str(err))
                problem, skip_to = f"malformed item at id {expected}: {err}", expected + 1
                break
            if agg_id < expected:
                self.counters.count("ids_backwards")
                log.warning("%s: id %d is behind the cursor %d (duplicate or out of order); skipped",
                            state.symbol, agg_id, expected)
                continue
            if agg_id > expected:
                self.counters.count("holes")
                problem, skip_to = f"hole: expected id {expected}, got {agg_id}", agg_id
                break
            good.append((agg_id, trade_time, value))
            expected += 1
        if problem is not None:
            expected = self.handle_stuck(state, expected, skip_to, problem)
        self.delivery.produce(state, good)
        state.fetch_from = expected
        return len(good)

    def handle_stuck(self, state: SymbolState, expected: int, skip_to: int, problem: str) -> int:
        """Refetch from the id where the page went bad; after MAX_SAME_FAILURE bad answers at the same id,
        move on to `skip_to` (the bad item is in the dead-letter topic, or the exchange never had those ids)."""
        if state.gives_up_at(expected):
            self.counters.count("ids_given_up")
            log.error("%s: %s, %d times in a row; giving up ids %d..%d and moving on", state.symbol, problem,
                      state.stuck_count, expected, skip_to - 1)
            return skip_to
        log.warning("%s: %s; refetching from id %d", state.symbol, problem, expected)
        return expected

    def dead_letter(self, symbol: str, value: bytes, reason: str) -> None:
        log.warning("%s: to %s: %s", symbol, self.dead_letters.topic, reason)
        while True:
            try:
                self.dead_letters.send(value, symbol.encode(), reason, symbol=symbol, base_url=self.s.binance_base_url)
                return
            except BufferError:  # the queue is full while Kafka is away: wait for room, as for trades
                self.producer.poll(0.05)

    def interval(self, state: SymbolState) -> float:
        """Seconds until the symbol's next poll (schedule.poll_interval)."""
        return poll_interval(state, self.states, self.gate, self.s.source_min_poll_interval_s,
                             self.s.source_max_poll_interval_s)

    # ---- reporting and stop ----------------------------------------------------------------------

    def status(self) -> dict:
        """What make status and make demo read besides the counters: the weight and each symbol's position."""
        now_ms = int(time.time() * 1000)
        return {
            "mode": "rest",
            "base_url": self.s.binance_base_url,
            "weight_used": self.gate.used,
            "weight_budget": self.gate.budget,
            "weight_limit": self.gate.limit,
            "symbols": {
                st.symbol: {"cursor": st.cursor, "produced": st.produced, "rate_per_s": round(st.rate, 2),
                            "lag_ms": now_ms - st.newest_time if st.newest_time else None, "mode": "poll"}
                for st in self.states.values()
            },
        }

    def report(self, force: bool = False) -> None:
        self.delivery.settle()
        status = self.counters.report(self.status, force=force)
        for symbol, st in (status or {}).get("symbols", {}).items():  # the status file's lags, as gauges too
            if st["lag_ms"] is not None:
                self.counters.set("symbol_lag_seconds", st["lag_ms"] / 1000, symbol=symbol)

    def stop(self, *_args) -> None:
        self.stopping = True
        self.gate.stopping.set()

    def close(self) -> None:
        self.producer.flush(30)
        self.client.close()
        self.report(force=True)
        log.info("stopped; counters: %s", self.counters.snapshot())

