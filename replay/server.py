"""A local stand-in for Binance's public REST API that replays recorded trades.

It serves /api/v3/ping, time, exchangeInfo, aggTrades, klines and ticker/price with Binance's parameters,
errors and request-weight accounting (X-MBX-USED-WEIGHT-1M, 429 with Retry-After, 418 for a client that
keeps going), releases trades as if live at a chosen speed, and injects faults on request for tests:

    POST /_replay/faults  {"kind": "503", "count": 2, "symbol": "BTCUSDT"}   (kinds: see FAULT_KINDS)
                          with `Authorization: Bearer <REPLAY_TOKEN>`, else 401
    GET  /_replay/stats   requests, weights, 429s and 418s seen, and the streams' counters (open: it only reads)

Binance's WebSocket streams (replay/ws.py) run beside it on --ws-port, on the same clock, tapes and faults.

    replay-server --tape data/binance --port 8900 --ws-port 8901 --speed 0      (0: as fast as possible)
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptopipe.logs import setup_logging
from cryptopipe.settings import load_settings
from replay.tape import INTERVAL_MS, SymbolTape, load_tapes
from replay.state import FAULT_KINDS, WS_MALFORMED_VARIANTS, Fault, Replay
from replay.ws import start_ws_in_thread

log = logging.getLogger("replay")

WEIGHTS = {"/api/v3/ping": 1, "/api/v3/time": 1, "/api/v3/exchangeInfo": 20, "/api/v3/aggTrades": 4,
           "/api/v3/klines": 2, "/api/v3/ticker/price": 2}


class BinanceError(Exception):
    def __init__(self, status: int, code: int, msg: str):
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


def int_param(query: dict[str, str], name: str, required: bool = False) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        if required:
            raise BinanceError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        return None
    if not value.isdigit() or len(value) > 20:
        raise BinanceError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(value)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Binance's front end
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart
    server_version = "replay-binance"
    replay: Replay
    token: str | None = None  # of POST /_replay/...; None refuses them all

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    def send(self, status: int, body: bytes, used: int | None, extra: dict[str, str] | None = None,
             content_type: str = "application/json;charset=UTF-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if used is not None:
            self.send_header("X-MBX-USED-WEIGHT-1M", str(used))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, status: int, code: int, msg: str, used: int | None, extra=None) -> None:
        self.send(status, json.dumps({"code": code, "msg": msg}).encode(), used, extra)

    def authorized(self) -> bool:
        given = self.headers.get("Authorization", "").encode()
        # compare_digest: the time taken does not tell how much of a guess was right.
        return bool(self.token) and hmac.compare_digest(given, f"Bearer {self.token}".encode())

    def do_POST(self):  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)  # read even when refused, or the connection's next request starts mid-body
        if url.path.startswith("/_replay/") and not self.authorized():
            return self.send_error_json(401, -1, "missing or wrong token: fault injection needs the header "
                                        "Authorization: Bearer <REPLAY_TOKEN>", None, {"WWW-Authenticate": "Bearer"})
        body = json.loads(raw or b"{}")
        if url.path == "/_replay/faults":
            faults = [Fault(**f) for f in (body if isinstance(body, list) else [body])]
            for f in faults:
                if f.kind not in FAULT_KINDS:
                    return self.send_error_json(400, -1, f"unknown fault kind {f.kind}", None)
                if f.kind == "ws_malformed" and f.variant not in WS_MALFORMED_VARIANTS:
                    return self.send_error_json(400, -1, f"unknown ws_malformed variant {f.variant}", None)
            with self.replay.fault_lock:
                self.replay.faults.extend(faults)
            return self.send(200, b'{"ok":true}', None)
        self.send_error_json(404, -1, "not found", None)

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/_replay/stats":
            return self.send(200, json.dumps(self.replay.stats()).encode(), None)
        weight = WEIGHTS.get(url.path)
        if weight is None:
            return self.send_error_json(404, -1, "Not found", None)
        if url.path == "/api/v3/ticker/price" and "symbol" not in query:
            weight = 4
        now = time.time()
        used, refuse, retry = self.replay.limiter.admit(weight, now)
        symbol = query.get("symbol")
        status = refuse or 200
        try:
            if refuse == 429:
                return self.send_error_json(
                    429, -1003, f"Too much request weight used; current limit is {self.replay.limiter.limit} "
                    "request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
                    used, {"Retry-After": retry})
            if refuse == 418:
                until = int((now + int(retry)) * 1000)
                return self.send_error_json(418, -1003, f"Way too much request weight used; IP banned until {until}. "
                                            "Please use WebSocket Streams for live updates to avoid bans.",
                                            used, {"Retry-After": retry})
            fault = self.replay.take_fault(url.path, symbol)
            if fault is not None and self.fault_response(fault, used, now):
                status = int(fault.kind) if fault.kind.isdigit() else status
                return
            result = self.route(url.path, query, fault)
            body = result if isinstance(result, bytes) else json.dumps(result, separators=(",", ":")).encode()
            self.send(200, body, used)
        except BinanceError as err:
            status = err.status
            self.send_error_json(err.status, err.code, err.msg, used)
        finally:
            self.replay.requests.append((now, url.path, status, symbol or ""))

    def fault_response(self, fault: Fault, used: int, now: float) -> bool:
        """Answer with the fault and return True, or return False to answer normally (maybe altered)."""
        kind = fault.kind
        if kind in ("500", "503"):
            self.send_error_json(int(kind), -1001, "Internal error; unable to process your request. Please try again.", used)
        elif kind in ("502", "504"):
            self.send(int(kind), f"<html><body><h1>{kind} Gateway error</h1></body></html>".encode(), used,
                      content_type="text/html")
        elif kind in ("429", "418"):
            self.replay.limiter.force(int(kind), fault.retry_after_s, now)
            self.send_error_json(int(kind), -1003, "Too much request weight used (injected).", used,
                                 {"Retry-After": str(fault.retry_after_s)})
        elif kind == "timeout":
            time.sleep(fault.delay_s or 15)
            self.close_connection = True
        elif kind == "slow":
            time.sleep(fault.delay_s)
            return False
        elif kind == "malformed":
            self.send(200, b'[{"a":1,"p":"0.1","q"', used)
        elif kind == "wrong_type":
            self.send(200, b'{"unexpected":"object instead of a list"}', used)
        else:
            return False  # bad_items, hole, backwards: a real page, altered in route()
        return True

    def route(self, path: str, query: dict[str, str], fault: Fault | None) -> object:
        replay = self.replay
        if path == "/api/v3/ping":
            return {}
        if path == "/api/v3/time":
            return {"serverTime": replay.now_ms()}
        if path == "/api/v3/exchangeInfo":
            return self.exchange_info(query)
        if path == "/api/v3/ticker/price":
            symbols = [self.tape_for(query["symbol"]).symbol] if "symbol" in query else sorted(replay.tapes)
            prices = []
            for s in symbols:
                n = replay.tapes[s].visible(replay.now_ms())
                if n:
                    prices.append({"symbol": s, "price": replay.tapes[s].trades[n - 1]["p"]})
            return prices[0] if "symbol" in query and prices else prices
        tape = self.tape_for(query.get("symbol"))
        if path == "/api/v3/klines":
            interval = query.get("interval")
            if not interval:
                raise BinanceError(400, -1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.")
            if interval not in INTERVAL_MS:
                raise BinanceError(400, -1120, "Invalid interval.")
            limit = self.limit(query, default=500, maximum=1000)
            return tape.klines(replay.now_ms(), INTERVAL_MS[interval], limit,
                               int_param(query, "startTime"), int_param(query, "endTime"))
        return self.agg_trades(tape, query, fault)

    def tape_for(self, symbol: str | None) -> SymbolTape:
        if not symbol:
            raise BinanceError(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        tape = self.replay.tapes.get(symbol)
        if tape is None:
            raise BinanceError(400, -1121, "Invalid symbol.")
        return tape

    @staticmethod
    def limit(query: dict[str, str], default: int, maximum: int) -> int:
        limit = int_param(query, "limit")
        if limit is None:
            return default
        if not 1 <= limit <= maximum:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    def exchange_info(self, query: dict[str, str]) -> dict:
        info = self.replay.exchange_info
        wanted = [query["symbol"]] if "symbol" in query else json.loads(query["symbols"]) if "symbols" in query else None
        if wanted is None:
            return info
        by_name = {s["symbol"]: s for s in info["symbols"]}
        missing = [s for s in wanted if s not in by_name]
        if missing:
            raise BinanceError(400, -1121, f"Invalid symbol '{missing[0]}'.")
        return {**info, "symbols": [by_name[s] for s in wanted]}

    def agg_trades(self, tape: SymbolTape, query: dict[str, str], fault: Fault | None) -> bytes:
        from_id = int_param(query, "fromId")
        start, end = int_param(query, "startTime"), int_param(query, "endTime")
        limit = self.limit(query, default=500, maximum=1000)
        if from_id is not None and (start is not None or end is not None):
            raise BinanceError(400, -1128, "Combination of optional parameters invalid.")
        if start is not None and end is not None and end - start > 3_600_000:
            raise BinanceError(400, -1127, "More than 1 hours between startTime and endTime.")
        lo, hi = tape.agg_trades(self.replay.now_ms(), limit, from_id, start, end)
        items = tape.json_items[lo:hi]
        if fault is not None and fault.kind in ("hole", "backwards", "bad_items") and len(items) < 6:
            with self.replay.fault_lock:  # too short to alter: the fault waits for a longer page
                fault.count += 1
                if fault not in self.replay.faults:
                    self.replay.faults.insert(0, fault)
        elif fault is not None and fault.kind in ("hole", "backwards", "bad_items"):
            mid = len(items) // 2
            if fault.kind == "hole":
                items = items[:mid] + items[mid + 3:]
            elif fault.kind == "backwards":
                items = items[:mid] + items[mid - 3:mid] + items[mid:]
            elif fault.kind == "bad_items":
                item = dict(tape.trades[lo + mid])
                if fault.variant == "missing_time":
                    del item["T"]
                elif fault.variant == "string_id":
                    item["a"] = str(item["a"])
                else:
                    item["p"] = "not-a-number"
                items = items[:mid] + [json.dumps(item)] + items[mid + 1:]
        return ("[" + ",".join(items) + "]").encode()


def shift_to_now(tapes: dict[str, SymbolTape], live: bool) -> int:
    """Whole minutes that move the tape's start (live) or end (as fast as possible) into this minute.

    Event times then look current, so Kafka's time-based retention keeps them and none lies in the future."""
    anchor = min(t.times[0] for t in tapes.values()) if live else max(t.times[-1] for t in tapes.values())
    return (int(time.time() * 1000) - anchor) // 60_000


def shift_each_to_now(tapes: dict[str, SymbolTape]) -> dict[str, int]:
    """As fast as possible, tapes recorded years apart each end in this minute (one shift per symbol)."""
    return {symbol: shift_to_now({symbol: tape}, live=False) for symbol, tape in tapes.items()}


def make_server(replay: Replay, host: str = "127.0.0.1", port: int = 0,
                token: str | None = None) -> ThreadingHTTPServer:
    """`token`: the bearer token POST /_replay/faults needs; without one, no request may inject faults."""
    handler = type("BoundHandler", (Handler,), {"replay": replay, "token": token})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def start_in_thread(replay: Replay, host: str = "127.0.0.1", port: int = 0,
                    token: str | None = None) -> tuple[ThreadingHTTPServer, str]:
    """For tests and benchmarks: serve in a background thread; returns the server and its base URL."""
    server = make_server(replay, host, port, token)
    threading.Thread(target=server.serve_forever, name="replay-server", daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


def main(argv: list[str] | None = None) -> int:
    s = load_settings()
    parser = argparse.ArgumentParser(description="Replay recorded Binance trades through Binance's REST API.")
    parser.add_argument("--tape", type=Path, default=s.replay_tape_dir, help="tape folder (<symbol>_aggtrades*.json)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=s.replay_port)
    parser.add_argument("--speed", type=float, default=s.replay_speed, help="1 = live, 0 = as fast as possible")
    parser.add_argument("--shift-minutes", type=int, default=s.replay_shift_minutes,
                        help="add whole minutes to every event time")
    parser.add_argument("--shift-to-now", action="store_true",
                        help="shift by whole minutes so the replay looks current: at speed 0 each symbol's tape "
                             "ends in the current minute (no event time lies ahead), otherwise the tape starts in it")
    parser.add_argument("--weight-limit", type=int, default=s.replay_weight_limit)
    parser.add_argument("--window-s", type=float, default=60.0, help="weight window length (Binance: 60)")
    parser.add_argument("--ban-s", type=float, default=120.0, help="first ban length after ignoring a 429")
    parser.add_argument("--ws-port", type=int, default=s.replay_ws_port, help="the WebSocket streams' port")
    parser.add_argument("--delay-s", type=float, default=0.0,
                        help="with --speed > 0: the clock starts this many seconds after the server (time to subscribe)")
    parser.add_argument("--ws-lifetime-s", type=float, default=s.replay_ws_lifetime_s,
                        help="close every stream connection after this long (Binance: 24 h)")
    parser.add_argument("--ws-ping-s", type=float, default=20.0, help="ping interval (Binance: 20)")
    parser.add_argument("--ws-pong-timeout-s", type=float, default=60.0,
                        help="close a connection that sends no pong this long (Binance: 60)")
    parser.add_argument("--ws-conn-limit", type=int, default=300,
                        help="connection attempts per window, then HTTP 429 (Binance: 300)")
    parser.add_argument("--ws-conn-window-s", type=float, default=300.0, help="(Binance: 5 minutes)")
    parser.add_argument("--ws-msg-rate", type=int, default=5,
                        help="incoming messages a second per connection, then close 1008 (Binance: 5)")
    args = parser.parse_args(argv)
    setup_logging(s)
    shift = args.shift_minutes
    if args.shift_to_now:
        raw = load_tapes(args.tape)
        shift = shift_to_now(raw, live=True) if args.speed > 0 else shift_each_to_now(raw)
    tapes = load_tapes(args.tape, shift)
    replay = Replay(tapes, speed=args.speed, weight_limit=args.weight_limit, window_s=args.window_s, ban_s=args.ban_s,
                    delay_s=args.delay_s)
    try:
        server = make_server(replay, args.host, args.port, s.replay_token.get_secret_value())
    except OSError as err:
        raise SystemExit(f"error: cannot serve REST on {args.host}:{args.port} ({err.strerror}); "
                         "set REPLAY_PORT in .env or pass --port") from None
    try:
        ws, ws_url = start_ws_in_thread(replay, args.host, args.ws_port, lifetime_s=args.ws_lifetime_s,
                                        ping_s=args.ws_ping_s, pong_timeout_s=args.ws_pong_timeout_s,
                                        conn_limit=args.ws_conn_limit, conn_window_s=args.ws_conn_window_s,
                                        msg_rate=args.ws_msg_rate)
    except OSError as err:
        server.server_close()
        raise SystemExit(f"error: cannot serve the streams on {args.host}:{args.ws_port} ({err.strerror}); "
                         "set REPLAY_WS_PORT in .env or pass --ws-port") from None
    log.info("replaying %s (%s trades) on http://%s:%d at speed %s, shift %s min; streams on %s",
             ", ".join(tapes), f"{sum(len(t.ids) for t in tapes.values()):,}", args.host, args.port,
             args.speed or "max", shift, ws_url)

    def interrupt(*_args) -> None:
        raise KeyboardInterrupt  # SIGTERM ends serve_forever as Ctrl-C does

    signal.signal(signal.SIGTERM, interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        ws.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
