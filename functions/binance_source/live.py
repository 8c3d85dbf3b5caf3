"""The source's WebSocket mode: live trades from Binance's aggTrade streams, REST only to close seams.

    BINANCE_SOURCE_MODE=websocket binance-source      (the default; `rest` polls as before)

Each symbol is "live" (its stream's events are produced as they come, in id order) or "backfill" (REST
pages from the fetch position, with the stream's events held until the pages meet them). A symbol
backfills when its stream is subscribed (at start and after every reconnect) and whenever the stream
skips an id (a lost or malformed event, events out of order) or stays silent while REST has newer
trades (then it is also resubscribed). Every seam is closed by agg id, so there is no gap and no
duplicate at any of them; the cursor, the resume after `kill -9`, the producer and the dead letters are
the REST mode's own.

All state changes on one event loop: picows calls back with each frame there, and REST requests run in
worker threads whose answers come back to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import orjson
from confluent_kafka import Producer

from cryptopipe.settings import Settings
from functions.binance_source.client import BinanceError, RateLimited, TransientError
from functions.binance_source.schedule import SymbolState
from functions.binance_source.source import BinanceSource
from functions.binance_source.streams import Connection, ConnectionBudget
from functions.binance_source.trades import BadTrade, trade_value

log = logging.getLogger("binance_source")

LIVE, BACKFILL, DOWN = "live", "backfill", "down"
BACKFILL_WORKERS = 4  # REST requests at once: a reconnect of hundreds of symbols backfills in parallel
SEAM_RETRY_S = 0.2  # REST has not got the ids the stream skipped yet: ask again this much later (and later)
# REST is the exchange's record: held events it has not reached in this long are dropped (a bogus id on the
# stream must not hold a symbol back); real ones among them come back from REST once it has them.
HELD_TIMEOUT_S = 30.0
HOUSEKEEPING_S = 0.2


class StreamSource(BinanceSource):
    """Reads the aggTrade streams of the symbols in `settings` and produces their trades until `stop()`."""

    def __init__(self, settings: Settings, producer: Producer | None = None):
        super().__init__(settings, producer)
        self.pool = ThreadPoolExecutor(BACKFILL_WORKERS, thread_name_prefix="backfill")
        self.connections: list[Connection] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rated: dict[str, int] = {}  # produced per symbol at the last rate update
        # Live events of one read of the sockets, per symbol, produced together once the read is done.
        self.outgoing: dict[str, list] = {}
        self.rated_at = 0.0

    def run(self) -> None:
        try:
            self.setup()
            asyncio.run(self.serve())
        finally:
            self.close()

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        symbols = list(self.states)
        per = self.s.source_ws_streams_per_connection
        budget = ConnectionBudget(self.s.source_ws_connections_per_5min)
        for i in range(0, len(symbols), per):
            conn = Connection(len(self.connections), self.s.binance_ws_url, symbols[i:i + per], budget,
                              self.on_text, self.on_subscribed, self.on_down, self.counters.count)
            for symbol in conn.symbols:
                self.states[symbol].connection = conn.index
            self.connections.append(conn)
        log.info("streaming %d symbols from %s over %d connection(s); REST backfill from %s", len(symbols),
                 self.s.binance_ws_url, len(self.connections), self.s.binance_base_url)
        tasks = [asyncio.create_task(conn.run()) for conn in self.connections]
        for state in self.states.values():
            state.last_event = time.monotonic()  # REST polling starts only if the streams do not come
        try:
            while not self.stopping and self.states:
                await asyncio.sleep(HOUSEKEEPING_S)
                self.housekeeping()
        finally:
            self.flush_live()
            for conn in self.connections:
                conn.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def housekeeping(self) -> None:
        """What no frame triggers: acknowledgements, failed deliveries, silent streams, the status report."""
        self.producer.poll(0)
        now = time.monotonic()
        if now - self.rated_at >= 1.0:  # each symbol's trade rate, for the status
            for state in self.states.values():
                state.polled(now, state.produced - self.rated.get(state.symbol, 0))
                self.rated[state.symbol] = state.produced
            self.rated_at = now
        for state in list(self.states.values()):
            if state.delivery_failed and not state.fetching:
                self.flush_live()
                self.delivery.recover(state)  # waits for Kafka; the streams' connections may drop meanwhile
                self.backfill(state, "delivery failed")
            elif state.mode == LIVE and now - state.last_event > self.s.source_ws_silence_s:
                state.last_event = now  # checked again after another silence
                state.probing = not state.fetching
                self.request(state)  # the answer tells a quiet symbol from a silent stream
            elif state.mode == BACKFILL and not state.fetching:
                self.request(state)  # a seam must never wait on nothing
            elif state.mode == DOWN and now - state.last_event > self.s.source_max_poll_interval_s:
                state.last_event = now  # its connection is down: poll REST meanwhile, at the slowest rate
                self.request(state)
        self.report()

    # ---- frames ------------------------------------------------------------------------------------

    def on_text(self, payload: bytes | memoryview, conn: Connection, bad: str | None) -> None:
        try:
            self.take_frame(payload, conn, bad)
        except Exception as err:  # a bug must not drop the connection over one frame: keep the frame instead
            log.exception("error handling a frame")
            self.bad_frame(payload, f"error handling the frame: {err!r:.200}")

    def take_frame(self, payload: bytes | memoryview, conn: Connection, bad: str | None) -> None:
        if bad is not None:
            return self.bad_frame(payload, bad)
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError as err:
            return self.bad_frame(payload, f"frame is not JSON: {err}")
        if not isinstance(msg, dict):
            return self.bad_frame(payload, "frame is not a JSON object")
        if "id" in msg and ("result" in msg or "error" in msg):
            return conn.on_reply(msg)
        data = msg.get("data") if "stream" in msg else msg  # combined streams wrap each event
        kind = data.get("e") if isinstance(data, dict) else None
        if kind == "serverShutdown":
            return conn.server_shutdown()
        symbol = data.get("s") if isinstance(data, dict) else None
        state = self.states.get(symbol) if isinstance(symbol, str) else None
        if kind != "aggTrade" or state is None:
            return self.bad_frame(payload, f"not an aggTrade event of a subscribed symbol (e={kind!r:.30}, "
                                           f"s={symbol!r:.30})")
        try:
            agg_id, trade_time, value = trade_value(symbol, data, self.s.max_clock_skew_ms)
        except BadTrade as err:
            return self.bad_frame(payload, str(err), state)
        self.on_event(state, agg_id, trade_time, value)

    def bad_frame(self, payload: bytes | memoryview, reason: str, state: SymbolState | None = None) -> None:
        """To the dead-letter topic; the trade a bad event stood for is fetched from REST at once."""
        self.counters.count("bad_frames")
        self.dead_letter(state.symbol if state else "", bytes(payload[:100_000]), reason)
        if state is not None and state.mode == LIVE:
            self.backfill(state, "bad frame")

    def on_event(self, state: SymbolState, agg_id: int, trade_time: int, value: bytes) -> None:
        state.last_event = time.monotonic()
        if state.mode != LIVE or state.delivery_failed:
            state.buffer[agg_id] = (trade_time, value)
        elif state.fetch_from is None or agg_id == state.fetch_from:  # None: a symbol's very first trade
            if state.fetch_from is None:
                state.cursor = agg_id
            state.fetch_from = agg_id + 1
            run = self.outgoing.get(state.symbol)
            if run is None:
                if not self.outgoing:  # after the whole read: one produce call and one poll per symbol
                    self.loop.call_soon(self.flush_live)
                run = self.outgoing[state.symbol] = []
            run.append((agg_id, trade_time, value))
        elif agg_id < state.fetch_from:
            self.counters.count("ws_duplicates")
        else:
            self.counters.count("ws_gaps")
            state.buffer[agg_id] = (trade_time, value)
            self.backfill(state, f"stream skipped ids {state.fetch_from}..{agg_id - 1}")

    def flush_live(self) -> None:
        """Produce the live events held for the end of a read. Every other path that produces a symbol's
        trades calls this first, so its trades go out in id order."""
        outgoing, self.outgoing = self.outgoing, {}
        for symbol, run in outgoing.items():
            state = self.states.get(symbol)
            if state is not None:
                self.delivery.produce(state, run)
                self.counters.count("stream_trades", len(run))

    # ---- connections -------------------------------------------------------------------------------------

    def on_subscribed(self, symbols: list[str]) -> None:
        """The streams are live: fill in from REST what happened before them (or while disconnected)."""
        for symbol in symbols:
            state = self.states.get(symbol)
            if state is not None:
                self.backfill(state, "subscribed")

    def on_down(self, symbols: list[str]) -> None:
        for symbol in symbols:
            state = self.states.get(symbol)
            if state is not None and state.mode != DOWN:  # REST polling starts a while after the loss
                state.mode, state.last_event = DOWN, time.monotonic()

    # ---- backfill: REST pages from the fetch position until they meet the stream ------------------

    def backfill(self, state: SymbolState, reason: str) -> None:
        if self.connections[state.connection].transport is None:
            state.mode = DOWN  # no stream to meet: REST only, until the connection is back
        elif state.cursor is None and self.start_time is None:
            state.mode = LIVE  # no history and no start time: it starts at the stream's first event
            state.buffer.clear()
            return
        else:
            self.open_seam(state, reason)
        self.request(state)

    def open_seam(self, state: SymbolState, reason: str) -> None:
        if state.mode != BACKFILL:
            state.mode, state.seam_reason, state.backfilled = BACKFILL, reason, 0
            self.counters.count("seams_opened")

    def request(self, state: SymbolState, delay: float = 0.0) -> None:
        """One REST request for the symbol in a worker thread (none if one is already in flight)."""
        if state.fetching or self.stopping:
            return
        state.fetching = True
        self.loop.call_later(delay, self.send, state)

    def send(self, state: SymbolState) -> None:
        if self.stopping:
            return
        params = (self.start_params(state) if state.cursor is None else
                  {"symbol": state.symbol, "fromId": state.fetch_from, "limit": self.s.binance_page_limit})
        future = self.pool.submit(self.get_trades, params)
        future.add_done_callback(lambda f: self.call_on_loop(self.on_answer, state, params, f))

    def call_on_loop(self, callback, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed while the request was out: the source is stopping
            pass

    def on_answer(self, state: SymbolState, params: dict, future: Future) -> None:
        state.fetching = False
        silence_check, state.probing = state.probing, False
        self.flush_live()
        if self.stopping or self.states.get(state.symbol) is not state:
            return
        try:
            body = future.result()
        except (RateLimited, TransientError, BinanceError) as err:
            self.fetch_failed(state, err)  # counts, logs and sets the retry time; may drop the symbol
            if state.symbol in self.states:
                self.request(state, max(0.0, state.next_poll - time.monotonic()))
            return
        state.failures = 0
        if state.delivery_failed:
            return  # housekeeping waits for Kafka, then backfills from what it holds
        if state.cursor is None:
            return self.start_from(state, body)
        if "fromId" not in params:  # where to start, answered after the stream's first event started it
            return None if state.mode == LIVE else self.drain(state, more=True)
        page_full = len(body) >= self.s.binance_page_limit
        # What the stream delivered while the request was out is on the page again: not news.
        fresh = [item for item in body if not (isinstance(item, dict) and isinstance(item.get("a"), int)
                                               and not isinstance(item["a"], bool) and item["a"] < state.fetch_from)]
        if state.mode == LIVE:
            if not silence_check or not fresh:
                return  # a quiet symbol, not a silent stream; or a page the stream overtook
            self.counters.count("silent_streams")
            log.warning("%s: no event for %.0f s but REST has trades from id %d: resubscribing", state.symbol,
                        self.s.source_ws_silence_s, state.fetch_from)
            self.connections[state.connection].resubscribe(state.symbol)
            self.open_seam(state, "silent stream")
        got = self.take_page(state, fresh)
        state.backfilled += got
        self.counters.count("backfilled_trades", got)
        self.drain(state, more=page_full or got < len(fresh))

    def start_from(self, state: SymbolState, rows: list) -> None:
        """A symbol with no history in Kafka: start where `start_params` says, or at its first event."""
        if not self.take_start(state, rows) and state.buffer:
            state.cursor = state.fetch_from = min(state.buffer)
        if state.cursor is None:
            if state.mode == BACKFILL:
                state.mode = LIVE  # no trade yet: the stream's first event starts it
            return
        self.drain(state, more=True)

    def drain(self, state: SymbolState, more: bool) -> None:
        """Produce the held events that continue the fetch position; ask for the next page while REST has
        more or the held events are still ahead; go live when the pages have met the stream."""
        held = state.buffer
        for agg_id in [a for a in held if a < state.fetch_from]:
            del held[agg_id]
        run = []
        while (agg_id := state.fetch_from + len(run)) in held:
            trade_time, value = held.pop(agg_id)
            run.append((agg_id, trade_time, value))
        if run:
            self.delivery.produce(state, run)
            state.fetch_from += len(run)
            self.counters.count("stream_trades", len(run))
        if held and not more and not run:  # REST has not reached the held events (yet)
            now = time.monotonic()
            state.held_since = state.held_since or now
            waited = now - state.held_since
            if waited < HELD_TIMEOUT_S:
                return self.request(state, max(SEAM_RETRY_S, min(5.0, waited / 4)))
            self.counters.count("held_dropped", len(held))
            log.error("%s: REST has had no trade from id %d for %.0f s while the stream sent ids from %d; dropping "
                      "%d held events and going on from REST", state.symbol, state.fetch_from, waited, min(held),
                      len(held))
            held.clear()
        state.held_since = None
        if held or more:
            return self.request(state)
        if state.mode != BACKFILL:
            return  # disconnected meanwhile: the reconnect backfills again
        state.mode, state.last_event = LIVE, time.monotonic()
        state.seam = {"agg_id": state.fetch_from, "backfilled": state.backfilled, "reason": state.seam_reason,
                      "at_ms": int(time.time() * 1000)}
        self.counters.count("seams_closed")
        log.info("%s: live from agg id %d; %d trades from REST closed the seam (%s)", state.symbol,
                 state.fetch_from, state.backfilled, state.seam_reason)

    # ---- reporting and stop ----------------------------------------------------------------------------

    def status(self) -> dict:
        status = super().status()
        status["mode"] = "websocket"
        status["ws_url"] = self.s.binance_ws_url
        status["connections"] = [
            {"streams": len(c.symbols), "connected_since_ms": int(c.connected_at * 1000) if c.connected_at else None,
             "reconnects": c.reconnects} for c in self.connections]
        for symbol, row in status["symbols"].items():
            state = self.states[symbol]
            row.update(mode=state.mode, seam=state.seam, held=len(state.buffer),
                       reconnects=self.connections[state.connection].reconnects if self.connections else 0)
        return status

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        super().close()
