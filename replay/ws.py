"""Binance's market-data WebSocket streams for the replay: aggTrade events pushed as the replay clock passes them.

As on wss://stream.binance.com: /ws/<stream> sends the events themselves, /stream?streams=<a>/<b> wraps each in
{"stream", "data"}, and /ws or /stream alone wait for a SUBSCRIBE; SUBSCRIBE, UNSUBSCRIBE and LIST_SUBSCRIPTIONS;
with Binance's limits: 1024 streams a connection, 5 incoming messages a second (close 1008), 300 connection
attempts per 5 minutes (HTTP 429), a ping every 20 s and a close after 60 s without a pong, and a 24-hour
lifetime that ends with a serverShutdown event. A subscription is live: it carries only the trades that happen
after it starts (REST has the rest), so at speed 0 a stream stays silent.

Faults come through the REST server's POST /_replay/faults and hit a stream's next event (kinds: WS_FAULT_KINDS):

    {"kind": "ws_malformed", "variant": "not_json", "symbol": "BTCUSDT"}    (variants: not_json, bad_price)

    ws, url = start_ws_in_thread(replay, port=0, lifetime_s=5)    # tests and benchmarks; ws.stop()
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from picows import (WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, WSUpgradeResponse,
                    WSUpgradeResponseWithListener, ws_create_server)

from replay.state import WS_FAULT_KINDS, Fault, Replay

log = logging.getLogger("replay.ws")

MAX_STREAMS = 1024
CLOSE_WAIT_S = 1.0  # after our close frame, how long the client has to answer before the socket goes
HOLD = object()  # take_fault: the stream waits (ws_out_of_order needs two events to swap)


@dataclass
class WsOptions:
    lifetime_s: float = 86400.0
    ping_s: float = 20.0
    pong_timeout_s: float = 60.0
    conn_limit: int = 300
    conn_window_s: float = 300.0
    msg_rate: int = 5
    tick_s: float = 0.01


class Invalid(Exception):
    """A client request Binance would answer with error code 2."""


class Sub:
    """One stream on one connection: its pre-serialized frames and the index of the next trade to send."""

    __slots__ = ("name", "symbol", "frames", "next", "stalled")

    def __init__(self, name: str, symbol: str, frames: list[bytes], start: int):
        self.name, self.symbol, self.frames, self.next, self.stalled = name, symbol, frames, start, False


class Conn(WSListener):
    def __init__(self, server: WsServer, combined: bool, names: list[str]):
        super().__init__()
        self.server, self.combined, self.initial = server, combined, names
        self.transport: WSTransport | None = None
        self.subs: dict[str, Sub] = {}
        self.paused = self.closed = False
        self.msg_times: deque[float] = deque(maxlen=max(1, server.opt.msg_rate))

    def on_ws_connected(self, transport: WSTransport) -> None:
        now, opt = time.monotonic(), self.server.opt
        self.transport = transport
        self.deadline, self.next_ping, self.unanswered_since = now + opt.lifetime_s, now + opt.ping_s, None
        self.subscribe(self.initial)
        self.server.conns.add(self)
        self.server.counts["connections_total"] += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.server.conns.discard(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.CLOSE:
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        if self.closed or transport.is_close_frame_sent or not self.admit():
            return
        if kind == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif kind == WSMsgType.PONG:
            self.unanswered_since = None
        else:
            self.request(frame)

    def admit(self) -> bool:
        """Binance's 5 messages a second, a sliding window: the 6th closes the connection."""
        now, times = time.monotonic(), self.msg_times
        self.server.counts["messages_in"] += 1
        if len(times) == times.maxlen and now - times[0] < 1.0:
            self.server.counts["closed_rate_limit"] += 1
            self.close(WSCloseCode.POLICY_VIOLATION, "Too many messages")
            return False
        times.append(now)
        return True

    def request(self, frame: WSFrame) -> None:
        msg_id = None
        try:
            if frame.msg_type != WSMsgType.TEXT or not frame.fin:
                raise Invalid("expected a JSON text frame")
            try:
                msg = json.loads(frame.get_payload_as_bytes())
            except (ValueError, RecursionError):
                raise Invalid("not valid JSON") from None
            if not isinstance(msg, dict):
                raise Invalid("expected a JSON object")
            msg_id = msg.get("id")
            if type(msg_id) is not int:
                msg_id = None
                raise Invalid("id must be an integer")
            method, params = msg.get("method"), msg.get("params", [])
            if method == "LIST_SUBSCRIPTIONS":
                result = list(self.subs)
            elif method in ("SUBSCRIBE", "UNSUBSCRIBE"):
                names = self.server.check_streams(params)
                if method == "UNSUBSCRIBE":
                    for name in names:
                        self.subs.pop(name, None)
                elif len(self.subs.keys() | set(names)) > MAX_STREAMS:
                    raise Invalid(f"at most {MAX_STREAMS} streams per connection")
                else:
                    self.subscribe(names)
                result = None
            else:
                raise Invalid(f"unknown method {method!r}")
            reply = {"result": result, "id": msg_id}
        except Invalid as err:
            reply = {"error": {"code": 2, "msg": f"Invalid request: {err}"}, "id": msg_id}
        self.transport.send(WSMsgType.TEXT, json.dumps(reply, separators=(",", ":")).encode())

    def subscribe(self, names: list[str]) -> None:
        """Live from now: each new stream starts at the first trade the replay clock has not reached."""
        server = self.server
        now_ms = server.replay.now_ms()
        for name in names:
            if name not in self.subs:
                symbol = server.streams[name]
                start = server.replay.tapes[symbol].visible(now_ms)
                self.subs[name] = Sub(name, symbol, server.frames(symbol, self.combined), start)

    def keepalive(self, now: float) -> None:
        """Lifetime, then pong timeout (counted from the first ping left unanswered), then the next ping."""
        opt, counts = self.server.opt, self.server.counts
        if now >= self.deadline:
            counts["closed_lifetime"] += 1
            self.transport.send(WSMsgType.TEXT, b'{"e":"serverShutdown","E":%d}' % self.server.replay.now_ms())
            self.close(WSCloseCode.OK, "")
        elif self.unanswered_since is not None and now - self.unanswered_since >= opt.pong_timeout_s:
            counts["closed_no_pong"] += 1
            self.close(WSCloseCode.GOING_AWAY, "Pong timeout")
        elif now >= self.next_ping:
            self.transport.send_ping(b"replay")
            self.next_ping = now + opt.ping_s
            if self.unanswered_since is None:
                self.unanswered_since = now

    def close(self, code: WSCloseCode, reason: str) -> None:
        self.closed = True
        self.transport.send_close(code, reason.encode())
        self.server.loop.call_later(CLOSE_WAIT_S, self.transport.disconnect)


class WsServer:
    """The streams of one Replay: connections, the pusher, limits and counters (the loop's thread only)."""

    def __init__(self, replay: Replay, options: WsOptions):
        self.replay, self.opt = replay, options
        self.streams = {f"{symbol.lower()}@aggTrade": symbol for symbol in replay.tapes}
        self.conns: set[Conn] = set()
        self.attempts: deque[float] = deque()
        self.cache: dict[tuple[str, bool], list[bytes]] = {}
        self.counts = dict.fromkeys(("connections_total", "refused_429", "closed_rate_limit", "closed_no_pong",
                                     "closed_lifetime", "messages_in", "events_sent"), 0)
        replay.ws = self

    def stats(self) -> dict:
        conns = list(self.conns)
        return {"connections_open": len(conns), **self.counts, "subscriptions": sum(len(c.subs) for c in conns)}

    def frames(self, symbol: str, combined: bool) -> list[bytes]:
        """Every trade's frame, serialized once per tape and shape, so pushing only sends bytes."""
        key = (symbol, combined)
        if key not in self.cache:
            if combined:
                head = b'{"stream":"%s@aggTrade","data":' % symbol.lower().encode()
                self.cache[key] = [head + raw + b"}" for raw in self.frames(symbol, False)]
            else:
                # The REST items' JSON (fields a, p, q, f, l, T, m, M: Binance's order) behind the event's e, E
                # and s: string joins, several times faster than a dumps per trade when hundreds subscribe at once.
                tape = self.replay.tapes[symbol]
                self.cache[key] = [b'{"e":"aggTrade","E":%d,"s":"%s",%s' % (t, symbol.encode(), item[1:].encode())
                                   for t, item in zip(tape.times, tape.json_items)]
        return self.cache[key]

    def check_streams(self, names: object) -> list[str]:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise Invalid("params must be a list of stream names")
        unknown = [n for n in names if n not in self.streams]
        if unknown:
            raise Invalid(f"unknown stream {unknown[0]!r}")
        return list(dict.fromkeys(names))

    def upgrade(self, request: WSUpgradeRequest) -> Conn | WSUpgradeResponseWithListener | None:
        now = time.monotonic()
        # One window for the whole server: picows does not pass the peer's address, and every client here
        # comes from the same host anyway.
        while self.attempts and now - self.attempts[0] >= self.opt.conn_window_s:
            self.attempts.popleft()
        if len(self.attempts) >= self.opt.conn_limit:
            self.counts["refused_429"] += 1
            return refuse(429, "Too many connection attempts")
        self.attempts.append(now)
        url = urlsplit(request.path.decode("latin-1"))
        if url.path in ("/ws", "/ws/"):
            combined, names = False, []
        elif url.path.startswith("/ws/"):
            combined, names = False, url.path[4:].split("/")
        elif url.path in ("/stream", "/stream/"):
            combined, names = True, parse_qs(url.query).get("streams", [""])[-1].split("/")
        else:
            return None  # picows answers 404
        try:
            names = self.check_streams([n for n in names if n])
        except Invalid as err:
            return refuse(400, str(err))
        if len(names) > MAX_STREAMS:
            return refuse(400, f"at most {MAX_STREAMS} streams per connection")
        return Conn(self, combined, names)

    def take_fault(self, symbol: str, available: int) -> Fault | object | None:
        with self.replay.fault_lock:
            for fault in self.replay.faults:
                if fault.kind in WS_FAULT_KINDS and fault.symbol in (None, symbol):
                    if fault.kind == "ws_out_of_order" and available < 2:
                        return HOLD
                    fault.count -= 1
                    if fault.count <= 0:
                        self.replay.faults.remove(fault)
                    return fault
        return None

    async def push_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opt.tick_s)
            try:
                self.tick()
            except Exception:  # one bad tick must not end the streams
                log.exception("ws pusher failed")

    def tick(self) -> None:
        now, now_ms, tapes = time.monotonic(), self.replay.now_ms(), self.replay.tapes
        visible: dict[str, int] = {}
        for conn in list(self.conns):
            if conn.closed:
                continue
            conn.keepalive(now)
            for sub in list(conn.subs.values()):
                if conn.paused or conn.closed:
                    break
                hi = visible.get(sub.symbol)
                if hi is None:
                    hi = visible[sub.symbol] = tapes[sub.symbol].visible(now_ms)
                if sub.next < hi:
                    self.push(conn, sub, hi)

    def push(self, conn: Conn, sub: Sub, hi: int) -> None:
        """Send the sub's trades up to index hi, or as many as the client's socket takes before pausing."""
        if sub.stalled:
            sub.next = hi
            return
        fault = self.take_fault(sub.symbol, hi - sub.next) if self.replay.faults else None
        if fault is HOLD or (fault is not None and self.apply(fault, conn, sub, hi)):
            return
        send, frames, i = conn.transport.send, sub.frames, sub.next
        while i < hi and not conn.paused:
            send(WSMsgType.TEXT, frames[i])
            i += 1
        self.counts["events_sent"] += i - sub.next
        sub.next = i

    def apply(self, fault: Fault, conn: Conn, sub: Sub, hi: int) -> bool:
        """Act out a fault on the sub's next event(s); True when nothing else is to be sent now."""
        send, frames, i = conn.transport.send, sub.frames, sub.next
        if fault.kind in ("ws_drop", "ws_stall"):
            for other in list(self.conns):
                if fault.kind == "ws_drop" and sub.name in other.subs and not other.closed:
                    other.closed = True
                    other.transport.disconnect(graceful=False)  # no close frame: as if the network failed
                elif fault.kind == "ws_stall" and sub.name in other.subs:
                    other.subs[sub.name].stalled = True
            sub.next = hi
            return True
        if fault.kind == "ws_malformed" and fault.variant == "not_json":
            send(WSMsgType.TEXT, frames[i][: len(frames[i]) // 2])
        elif fault.kind == "ws_malformed":
            msg = json.loads(frames[i])
            (msg["data"] if conn.combined else msg)["p"] = "not-a-number"
            send(WSMsgType.TEXT, json.dumps(msg, separators=(",", ":")).encode())
            sub.next += 1
        elif fault.kind == "ws_duplicate":
            send(WSMsgType.TEXT, frames[i])
        elif fault.kind == "ws_out_of_order":
            send(WSMsgType.TEXT, frames[i + 1])
            send(WSMsgType.TEXT, frames[i])
            sub.next += 2
        self.counts["events_sent"] += sub.next - i
        return False

    def serve_in_thread(self, host: str, port: int) -> int:
        """Serve from a thread and event loop of its own, next to the REST server's threads; the bound port."""
        ready, failed = threading.Event(), []

        async def serve() -> None:
            self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
            # Pings and pongs are ours, not picows': both count toward the message limit, and Binance's 60 s
            # without a pong spans several 20 s pings, which picows' auto ping (reply timeout <= interval) can't.
            self.server = await ws_create_server(self.upgrade, host, port, enable_auto_ping=False,
                                                 enable_auto_pong=False, max_frame_size=1 << 20)
            self.port = self.server.sockets[0].getsockname()[1]
            pusher = self.loop.create_task(self.push_loop())
            ready.set()
            await self.stopping.wait()
            pusher.cancel()
            self.server.close()
            for conn in list(self.conns):
                if not conn.closed:
                    conn.transport.send_close(WSCloseCode.GOING_AWAY, b"Server stopping")
                conn.transport.disconnect()
            await asyncio.sleep(0.05)  # for the closes to reach the sockets

        def run() -> None:
            try:
                asyncio.run(serve())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failed.append(exc)
                ready.set()

        self.thread = threading.Thread(target=run, name="replay-ws", daemon=True)
        self.thread.start()
        if not ready.wait(10) or failed:
            raise failed[0] if failed else RuntimeError("the WebSocket server did not start")
        return self.port

    def stop(self, timeout: float = 5.0) -> None:
        """From any thread: close every connection (1001) and stop serving."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stopping.set)
            self.thread.join(timeout)


def refuse(status: int, msg: str) -> WSUpgradeResponseWithListener:
    body = json.dumps({"code": -1, "msg": msg}).encode()
    response = WSUpgradeResponse.create_error_response(status, body, {"Content-Type": "application/json"})
    return WSUpgradeResponseWithListener(response, None)


def start_ws_in_thread(replay: Replay, host: str = "127.0.0.1", port: int = 0, **options) -> tuple[WsServer, str]:
    """Serve the replay's streams from a background thread; returns the server (stop()) and its base URL.
    `options` are WsOptions' fields."""
    ws = WsServer(replay, WsOptions(**options))
    return ws, f"ws://{host}:{ws.serve_in_thread(host, port)}"
