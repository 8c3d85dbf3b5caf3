"""Binance's aggTrade streams over WebSocket, with picows: connections, subscriptions and reconnects.

picows hands each frame to a callback on the event loop, with no per-message future or queue: measured
here it reads ~480k small frames/s where the `websockets` client reads ~95k, which is what lets one
Python process take hundreds of symbols' streams and still leave time for Kafka.

Binance's limits, kept here: at most 1024 streams per connection (more symbols, more connections), 5
incoming messages per second per connection (our SUBSCRIBEs, pings and pongs all count), 300 new
connections per 5 minutes per IP. The server pings every 20 s and drops a connection without pongs
(picows answers pings itself), and closes every connection after 24 hours, announced by a
`serverShutdown` event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable

import orjson
import picows

from cryptopipe.retry import backoff

log = logging.getLogger("binance_source.streams")

STREAMS_PER_MESSAGE = 200  # streams in one SUBSCRIBE; 1024 streams take 6 messages
MESSAGES_PER_S = 3  # of Binance's 5 per second: room left for pings and pongs
# No frame at all for this long (Binance pings every 20 s): ping, and drop the connection without a pong.
IDLE_PING_S, PONG_TIMEOUT_S = 25.0, 10.0


class ConnectionBudget:
    """New connections in a sliding window, kept under our share of Binance's 300 per 5 minutes."""

    def __init__(self, limit: int, window_s: float = 300.0):
        self.limit, self.window_s = limit, window_s
        self.opened: deque[float] = deque()

    def wait_s(self, now: float) -> float:
        while self.opened and now - self.opened[0] >= self.window_s:
            self.opened.popleft()
        return 0.0 if len(self.opened) < self.limit else self.opened[0] + self.window_s - now

    def take(self, now: float) -> None:
        self.opened.append(now)


class Listener(picows.WSListener):
    def __init__(self, conn: "Connection"):
        self.conn = conn

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind == picows.WSMsgType.TEXT and frame.fin:
            # A view into picows' read buffer, valid during this call only: read now, copy only what is kept.
            self.conn.on_text(frame.get_payload_as_memoryview())
        elif kind == picows.WSMsgType.CLOSE:
            self.conn.close_code = frame.get_close_code()
            # An empty close frame reads as code 0, which may not be sent back.
            transport.send_close(frame.get_close_code() or picows.WSCloseCode.OK)
            transport.disconnect()
        elif kind in (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY, picows.WSMsgType.CONTINUATION):
            # Binance sends whole text frames only; anything else is a bad frame, kept for a look.
            self.conn.on_text(frame.get_payload_as_bytes(), bad=f"unexpected {kind.name} frame (fin={frame.fin})")


class Connection:
    """One WebSocket connection carrying the aggTrade streams of up to 1024 symbols, reconnected until
    `stop()`. `on_text(payload, conn)` gets every text frame; `on_subscribed(symbols)` runs when the server
    confirms a SUBSCRIBE (the streams are live from then on: the caller backfills up to them);
    `on_down(symbols)` when the connection is lost."""

    def __init__(self, index: int, url: str, symbols: list[str], budget: ConnectionBudget,
                 on_text: Callable[[bytes | memoryview, "Connection", str | None], None],
                 on_subscribed: Callable[[list[str]], None], on_down: Callable[[list[str]], None],
                 count: Callable[[str], None]):
        self.index, self.url, self.symbols, self.budget = index, url, symbols, budget
        self.handle_text, self.on_subscribed, self.on_down, self.count = on_text, on_subscribed, on_down, count
        self.transport: picows.WSTransport | None = None
        self.outbox: deque[tuple[str, list[str]]] = deque()  # (method, symbols) waiting for the pacer
        self.pending: dict[int, tuple[str, list[str]]] = {}  # request id -> (method, symbols)
        self.next_id = 1
        self.reconnects = 0
        self.connected_at: float | None = None
        self.close_code: int | None = None
        self.planned = False  # the server announced its shutdown: reconnect at once
        self.stopping = False
        self.backoff = backoff(0.5, 30.0)

    # ---- frames ----------------------------------------------------------------------------------

    def on_text(self, payload: bytes | memoryview, bad: str | None = None) -> None:
        self.handle_text(payload, self, bad)

    def on_reply(self, msg: dict) -> None:
        """A reply to one of our requests: {"result": null, "id": n} or {"error": {...}, "id": n}."""
        method, symbols = self.pending.pop(msg.get("id"), ("?", []))
        if "error" in msg:
            self.count("ws_request_errors")
            log.error("connection %d: %s of %d streams refused: %s", self.index, method, len(symbols), msg["error"])
            if method == "SUBSCRIBE":  # try again later: a refused stream must not stay silent
                asyncio.get_running_loop().call_later(5.0, self.request, "SUBSCRIBE", symbols)
        elif method == "SUBSCRIBE":
            self.on_subscribed(symbols)

    def server_shutdown(self) -> None:
        """Binance is about to close this connection (its 24 hours are up): go now, come back at once."""
        self.count("server_shutdowns")
        log.info("connection %d: the server announced its shutdown; reconnecting", self.index)
        self.planned = True
        if self.transport is not None:
            self.transport.send_close(picows.WSCloseCode.OK)
            self.transport.disconnect()

    # ---- requests, paced under Binance's 5 messages per second -------------------------------------

    def request(self, method: str, symbols: list[str]) -> None:
        for i in range(0, len(symbols), STREAMS_PER_MESSAGE):
            self.outbox.append((method, symbols[i:i + STREAMS_PER_MESSAGE]))

    def resubscribe(self, symbol: str) -> None:
        """A stream that went silent while its symbol traded: a new subscription starts it again."""
        self.request("UNSUBSCRIBE", [symbol])
        self.request("SUBSCRIBE", [symbol])

    async def pace(self) -> None:
        while self.transport is not None and not self.transport.is_disconnected:
            for _ in range(min(MESSAGES_PER_S, len(self.outbox))):
                method, symbols = self.outbox.popleft()
                rid, self.next_id = self.next_id, self.next_id + 1
                self.pending[rid] = (method, symbols)
                body = {"method": method, "params": [f"{s.lower()}@aggTrade" for s in symbols], "id": rid}
                self.transport.send(picows.WSMsgType.TEXT, orjson.dumps(body))
            await asyncio.sleep(1.0)

    # ---- the connection's life -----------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        while not self.stopping:
            wait = self.budget.wait_s(time.monotonic())
            if wait > 0:
                log.warning("connection %d: %d connections opened in 5 minutes; waiting %.0f s", self.index,
                            self.budget.limit, wait)
                await asyncio.sleep(wait)
                continue
            self.budget.take(time.monotonic())
            lived = await self.session()
            if self.stopping:
                return
            self.reconnects += 1
            self.count("ws_reconnects")
            self.on_down(self.symbols)
            failures = 0 if self.planned or lived > 60 else failures + 1
            delay = 0.0 if self.planned else self.backoff.compute(max(failures, 1))
            log.warning("connection %d (%d streams) lost after %.1f s (close code %s); reconnecting in %.1f s",
                        self.index, len(self.symbols), lived, self.close_code, delay)
            self.planned = False
            await asyncio.sleep(delay)

    async def session(self) -> float:
        """Connect, subscribe every stream, and return the seconds connected once the connection is gone."""
        self.close_code, self.pending, self.outbox = None, {}, deque()
        start = time.monotonic()
        try:
            transport, _ = await picows.ws_connect(
                lambda: Listener(self), f"{self.url.rstrip('/')}/stream", enable_auto_ping=True,
                auto_ping_idle_timeout=IDLE_PING_S, auto_ping_reply_timeout=PONG_TIMEOUT_S,
                websocket_handshake_timeout=10)
        except (OSError, asyncio.TimeoutError, picows.WSError) as err:
            self.count("ws_connect_errors")
            log.warning("connection %d: cannot connect to %s: %s", self.index, self.url, err)
            return 0.0
        self.transport, self.connected_at = transport, time.time()
        self.count("ws_connects")
        self.request("SUBSCRIBE", self.symbols)
        pacer = asyncio.create_task(self.pace())
        try:
            await transport.wait_disconnected()
        except Exception as err:  # what a frame callback raised: picows dropped the connection for it
            log.exception("connection %d: dropped after an error handling a frame: %s", self.index, err)
        finally:
            pacer.cancel()
            self.transport, self.connected_at = None, None
        return time.monotonic() - start

    def stop(self) -> None:
        self.stopping = True
        if self.transport is not None:
            self.transport.send_close(picows.WSCloseCode.OK)
            self.transport.disconnect()
