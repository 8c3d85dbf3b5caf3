"""The replay's WebSocket streams behave like Binance's: URL shapes, live aggTrade events, methods, limits,
keepalive, lifetime and injected faults.

The oracle for every event is the tape file itself, and for "live" the REST API's view of the same clock."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import time
from types import SimpleNamespace

import pytest
import requests
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from replay.server import start_in_thread
from replay.state import Replay
from replay.tape import load_tapes
from replay.ws import start_ws_in_thread

from .helpers import REPLAY_AUTH, REPLAY_TOKEN, TAPES, tape

BTC_FILE, ETH_FILE = "btcusdt_aggtrades_20210404.json", "ethusdt_aggtrades_20210404.json"
TRADES = {"BTCUSDT": tape(BTC_FILE), "ETHUSDT": tape(ETH_FILE)}
INDEX = {symbol: {t["a"]: i for i, t in enumerate(trades)} for symbol, trades in TRADES.items()}


@pytest.fixture
def serve(tmp_path):
    """A replay of the BTCUSDT and ETHUSDT tapes (recorded over the same 91 s) with REST and streams."""
    started = []

    def start(speed=10.0, tape_dir=None, **options):
        if tape_dir is None:
            tape_dir = tmp_path / "tapes"
            tape_dir.mkdir()
            for name in (BTC_FILE, ETH_FILE):
                shutil.copy(TAPES / name, tape_dir)
        replay = Replay(load_tapes(tape_dir), speed=speed)
        server, url = start_in_thread(replay, token=REPLAY_TOKEN)
        ws, ws_url = start_ws_in_thread(replay, **options)
        started.append((server, ws))
        return SimpleNamespace(url=url, ws_url=ws_url)

    yield start
    for server, ws in started:
        ws.stop()
        server.shutdown()


def open_ws(url: str):
    return connect(url, ping_interval=None, close_timeout=2, open_timeout=5, compression=None)


def collect(ws, seconds: float) -> list[str]:
    """Every message for `seconds`, as text."""
    out, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(ws.recv(timeout=left))
        except TimeoutError:
            break
    return out


def call(ws, request: dict | str | bytes) -> dict:
    """Send a request and return its reply, skipping the events that come before it."""
    ws.send(json.dumps(request) if isinstance(request, dict) else request)
    while True:
        msg = json.loads(ws.recv(timeout=3))
        if "id" in msg:
            return msg


def last_index(url: str, symbol: str) -> int:
    """The tape index of the newest trade REST shows now."""
    [newest] = requests.get(f"{url}/api/v3/aggTrades", params={"symbol": symbol, "limit": 1}, timeout=5).json()
    return INDEX[symbol][newest["a"]]


def stats(url: str) -> dict:
    return requests.get(f"{url}/_replay/stats", timeout=5).json()["ws"]


def fault(url: str, **kind) -> None:
    requests.post(f"{url}/_replay/faults", json=kind, headers=REPLAY_AUTH, timeout=5).raise_for_status()


def check_events(events: list[dict], symbol: str) -> list[int]:
    """Each event equals its tape item (same strings, same digits); returns their tape indexes."""
    for event in events:
        item = TRADES[symbol][INDEX[symbol][event["a"]]]
        assert {k: v for k, v in event.items() if k not in ("e", "E", "s")} == item
        assert event["e"] == "aggTrade" and event["s"] == symbol and item["T"] <= event["E"] <= item["T"] + 1000
    return [INDEX[symbol][e["a"]] for e in events]


def consecutive(indexes: list[int]) -> bool:
    return indexes == list(range(indexes[0], indexes[0] + len(indexes)))


def test_combined_streams_carry_every_trade_after_subscribing_as_on_the_tape(serve):
    r = serve(speed=10)
    time.sleep(0.5)  # some trades before the subscription, which it must not carry
    before = last_index(r.url, "BTCUSDT")
    with open_ws(f"{r.ws_url}/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade") as ws:
        after = last_index(r.url, "BTCUSDT")
        msgs = [json.loads(m) for m in collect(ws, 1.5)]
        ws_stats = stats(r.url)
    assert {m["stream"] for m in msgs} == {"btcusdt@aggTrade", "ethusdt@aggTrade"}
    assert all(m.keys() == {"stream", "data"} for m in msgs)
    for name, symbol in (("btcusdt@aggTrade", "BTCUSDT"), ("ethusdt@aggTrade", "ETHUSDT")):
        indexes = check_events([m["data"] for m in msgs if m["stream"] == name], symbol)
        assert len(indexes) > 10 and consecutive(indexes), indexes
    btc = check_events([m["data"] for m in msgs if m["stream"] == "btcusdt@aggTrade"], "BTCUSDT")
    assert before < btc[0] <= after + 1  # live: nothing REST had before, nothing skipped
    assert ws_stats["connections_open"] == 1 and ws_stats["subscriptions"] == 2
    assert ws_stats["events_sent"] >= len(msgs) and ws_stats["connections_total"] == 1


def test_raw_stream_sends_the_events_themselves(serve):
    r = serve(speed=10)
    with open_ws(f"{r.ws_url}/ws/ethusdt@aggTrade") as ws:
        events = [json.loads(m) for m in collect(ws, 1.5)]
    assert events and all("stream" not in e for e in events)
    assert consecutive(check_events(events, "ETHUSDT"))


def test_at_speed_0_every_trade_is_already_out_so_streams_stay_silent(serve):
    r = serve(speed=0)
    with open_ws(f"{r.ws_url}/stream?streams=btcusdt@aggTrade") as ws:
        assert collect(ws, 0.5) == []


def test_subscribe_unsubscribe_list_and_invalid_requests(serve):
    r = serve(speed=10, msg_rate=100)
    with open_ws(f"{r.ws_url}/ws") as ws:
        assert call(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {"result": [], "id": 1}
        both = ["btcusdt@aggTrade", "ethusdt@aggTrade"]
        assert call(ws, {"method": "SUBSCRIBE", "params": both, "id": 2}) == {"result": None, "id": 2}
        assert sorted(call(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3})["result"]) == both
        events = [json.loads(m) for m in collect(ws, 0.5)]
        assert {e["s"] for e in events} == {"BTCUSDT", "ETHUSDT"}
        assert call(ws, {"method": "UNSUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 4}) == {"result": None, "id": 4}
        later = [json.loads(m) for m in collect(ws, 0.5)]  # everything after the reply
        assert later and {e["s"] for e in later} == {"ETHUSDT"}
        for bad, want_id in [
            ("not json", None), ("[1, 2]", None), ('{"method": "FOO", "id": 6}', 6),
            ('{"method": "SUBSCRIBE", "params": ["nopeusdt@aggTrade"], "id": 7}', 7),
            ('{"method": "SUBSCRIBE", "params": ["BTCUSDT@aggTrade"], "id": 8}', 8),
            ('{"method": "SUBSCRIBE", "params": "btcusdt@aggTrade", "id": 9}', 9),
            ('{"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": "10"}', None),
            ('{"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"]}', None),
        ]:
            reply = call(ws, bad)
            assert reply["id"] == want_id and reply["error"]["code"] == 2, (bad, reply)
            assert reply["error"]["msg"].startswith("Invalid request"), reply
        assert call(ws, b"\x01\x02")["error"]["code"] == 2  # binary
        assert call(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 11}) == {"result": ["ethusdt@aggTrade"], "id": 11}
        assert ws.ping(b"echo me").wait(2)  # answered with a pong carrying the same payload


def test_at_most_1024_streams_per_connection(serve, tmp_path):
    item = TRADES["BTCUSDT"][0]
    for i in range(1025):
        (tmp_path / f"q{i:03x}_aggtrades.json").write_text(json.dumps([item]))
    r = serve(speed=0, tape_dir=tmp_path, msg_rate=100)
    names = [f"q{i:03x}@aggTrade" for i in range(1025)]
    with pytest.raises(InvalidStatus) as refused:
        open_ws(f"{r.ws_url}/stream?streams={'/'.join(names)}")
    assert refused.value.response.status_code == 400
    with open_ws(f"{r.ws_url}/stream?streams={'/'.join(names[:1000])}") as ws:
        assert call(ws, {"method": "SUBSCRIBE", "params": names[1000:1024], "id": 1}) == {"result": None, "id": 1}
        assert call(ws, {"method": "SUBSCRIBE", "params": names[1024:], "id": 2})["error"]["code"] == 2
        assert len(call(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3})["result"]) == 1024


def test_unknown_streams_in_the_url_are_refused_with_400(serve):
    r = serve(speed=0)
    for path in ("/ws/nopeusdt@aggTrade", "/ws/btcusdt@trade", "/ws/BTCUSDT@aggTrade",
                 "/stream?streams=btcusdt@aggTrade/nopeusdt@aggTrade"):
        with pytest.raises(InvalidStatus) as refused:
            open_ws(r.ws_url + path)
        assert refused.value.response.status_code == 400, path


def test_a_sixth_message_within_a_second_closes_the_connection(serve):
    r = serve(speed=0)
    with open_ws(f"{r.ws_url}/ws") as ws:
        for i in range(5):
            ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        assert [json.loads(ws.recv(timeout=3))["id"] for _ in range(5)] == [0, 1, 2, 3, 4]
        time.sleep(1.1)  # the window slides: five more are fine, pings included
        for _ in range(3):
            ws.ping()
        for i in (5, 6):
            ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        assert [json.loads(ws.recv(timeout=3))["id"] for _ in range(2)] == [5, 6]
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 7}))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=3)
        assert ws.close_code == 1008 and "Too many messages" in ws.close_reason
    assert stats(r.url)["closed_rate_limit"] == 1


def test_connection_attempts_past_the_limit_get_429(serve):
    r = serve(speed=0, conn_limit=3, conn_window_s=2)
    for _ in range(3):
        with open_ws(f"{r.ws_url}/ws"):
            pass
    with pytest.raises(InvalidStatus) as refused:
        open_ws(f"{r.ws_url}/ws")
    assert refused.value.response.status_code == 429
    time.sleep(2.1)
    with open_ws(f"{r.ws_url}/ws"):
        pass
    assert stats(r.url)["refused_429"] == 1


class RawClient:
    """A client that reads frames and never answers anything, not even pings."""

    def __init__(self, ws_url: str, path: str, rcvbuf: int | None = None):
        host, port = ws_url.removeprefix("ws://").split(":")
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        self.file = self.sock.makefile("rb")
        assert b" 101 " in self.file.readline()
        while self.file.readline() not in (b"\r\n", b""):
            pass

    def frames(self):
        """(opcode, payload) until the server closes the socket."""
        while len(head := self.file.read(2)) == 2:
            size = head[1] & 0x7F
            if size >= 126:
                size = struct.unpack(">H" if size == 126 else ">Q", self.file.read(2 if size == 126 else 8))[0]
            yield head[0] & 0x0F, self.file.read(size)

    def close(self):
        self.file.close()
        self.sock.close()


def test_a_client_that_never_answers_pings_is_closed_and_one_that_answers_stays(serve):
    r = serve(speed=0, ping_s=0.3, pong_timeout_s=1.0)
    with open_ws(f"{r.ws_url}/ws") as answering:  # websockets answers pings by itself
        silent = RawClient(r.ws_url, "/ws")
        start = time.monotonic()
        frames = list(silent.frames())
        elapsed = time.monotonic() - start
        silent.close()
        pings = [payload for op, payload in frames if op == 0x9]
        assert len(pings) >= 3 and all(pings), frames
        assert frames[-1][0] == 0x8 and struct.unpack(">H", frames[-1][1][:2])[0] == 1001
        assert 0.9 <= elapsed <= 3, elapsed
        assert call(answering, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {"result": [], "id": 1}
    assert stats(r.url)["closed_no_pong"] == 1


def test_the_lifetime_ends_with_server_shutdown_then_close_1000(serve):
    r = serve(speed=10, lifetime_s=1.0)
    msgs = []
    with open_ws(f"{r.ws_url}/stream?streams=btcusdt@aggTrade") as ws:
        start = time.monotonic()
        with pytest.raises(ConnectionClosed):
            while True:
                msgs.append(json.loads(ws.recv(timeout=5)))
        elapsed = time.monotonic() - start
        assert ws.close_code == 1000
    assert msgs[-1].keys() == {"e", "E"} and msgs[-1]["e"] == "serverShutdown" and isinstance(msgs[-1]["E"], int)
    assert len(msgs) > 10 and all(m["stream"] == "btcusdt@aggTrade" for m in msgs[:-1])
    assert 0.8 <= elapsed <= 3, elapsed
    assert stats(r.url)["closed_lifetime"] == 1


def faulted(r, path: str, **kind) -> list[str]:
    """Messages of one stream for a while before and after the fault."""
    with open_ws(r.ws_url + path) as ws:
        msgs = collect(ws, 0.3)
        fault(r.url, **kind)
        return msgs + collect(ws, 1.0)


def test_fault_malformed_not_json_adds_a_truncated_frame(serve):
    r = serve(speed=10)
    msgs = faulted(r, "/stream?streams=btcusdt@aggTrade", kind="ws_malformed", variant="not_json", symbol="BTCUSDT")
    parsed, broken = [], []
    for m in msgs:
        try:
            parsed.append(json.loads(m)["data"])
        except json.JSONDecodeError:
            broken.append(m)
    assert len(broken) == 1 and broken[0].startswith("{")
    assert consecutive(check_events(parsed, "BTCUSDT"))  # the next event still came, nothing lost


def test_fault_malformed_bad_price_replaces_an_event(serve):
    r = serve(speed=10)
    events = [json.loads(m) for m in faulted(r, "/ws/btcusdt@aggTrade", kind="ws_malformed", variant="bad_price")]
    bad = [e for e in events if e["p"] == "not-a-number"]
    assert len(bad) == 1
    real = TRADES["BTCUSDT"][INDEX["BTCUSDT"][bad[0]["a"]]]
    check_events([{**bad[0], "p": real["p"]}], "BTCUSDT")
    assert consecutive([INDEX["BTCUSDT"][e["a"]] for e in events])  # in place of the real one, not as well
    check_events([e for e in events if e is not bad[0]], "BTCUSDT")


def test_fault_duplicate_sends_an_event_twice(serve):
    r = serve(speed=10)
    events = [json.loads(m) for m in faulted(r, "/ws/btcusdt@aggTrade", kind="ws_duplicate", symbol="BTCUSDT")]
    indexes = check_events(events, "BTCUSDT")
    repeats = [i for i, (a, b) in enumerate(zip(indexes, indexes[1:])) if a == b]
    assert len(repeats) == 1 and consecutive(sorted(set(indexes)))
    assert events[repeats[0]] == events[repeats[0] + 1]


def test_fault_out_of_order_swaps_two_events(serve):
    r = serve(speed=10)
    events = [json.loads(m) for m in faulted(r, "/ws/btcusdt@aggTrade", kind="ws_out_of_order")]
    indexes = check_events(events, "BTCUSDT")
    descents = [i for i, (a, b) in enumerate(zip(indexes, indexes[1:])) if b < a]
    assert len(descents) == 1
    i = descents[0]
    assert indexes[i] == indexes[i + 1] + 1
    assert consecutive(indexes[:i] + [indexes[i + 1], indexes[i]] + indexes[i + 2:])


def test_fault_drop_cuts_only_the_connections_carrying_the_stream(serve):
    r = serve(speed=10)
    with open_ws(f"{r.ws_url}/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade") as dropped, \
            open_ws(f"{r.ws_url}/ws/ethusdt@aggTrade") as other:
        collect(dropped, 0.3)
        fault(r.url, kind="ws_drop", symbol="BTCUSDT")
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                dropped.recv(timeout=3)
        assert closed.value.rcvd is None  # no close frame: the TCP connection just ended
        collect(other, 0.2)
        assert [json.loads(m)["s"] for m in collect(other, 0.5)]  # still streaming


def test_fault_stall_silences_a_stream_until_it_is_subscribed_again(serve):
    r = serve(speed=10)
    btc = "btcusdt@aggTrade"
    with open_ws(f"{r.ws_url}/stream?streams={btc}/ethusdt@aggTrade") as ws:
        before = [json.loads(m) for m in collect(ws, 0.3)]
        fault(r.url, kind="ws_stall", symbol="BTCUSDT")
        collect(ws, 0.2)  # what was already on its way
        stalled = [json.loads(m)["stream"] for m in collect(ws, 1.0)]
        assert btc not in stalled and "ethusdt@aggTrade" in stalled  # open, the other stream goes on
        with open_ws(f"{r.ws_url}/ws/{btc}") as fresh:  # a new connection streams it as usual
            assert collect(fresh, 0.3)
        assert call(ws, {"method": "UNSUBSCRIBE", "params": [btc], "id": 1}) == {"result": None, "id": 1}
        live_from = last_index(r.url, "BTCUSDT")
        assert call(ws, {"method": "SUBSCRIBE", "params": [btc], "id": 2}) == {"result": None, "id": 2}
        after = [json.loads(m)["data"] for m in collect(ws, 0.5)]
    resumed = check_events([e for e in after if e["s"] == "BTCUSDT"], "BTCUSDT")
    last_before = max(INDEX["BTCUSDT"][m["data"]["a"]] for m in before if m["stream"] == btc)
    assert resumed and consecutive(resumed) and resumed[0] > live_from > last_before + 10  # the stall is never sent


def test_a_slow_reader_loses_nothing(serve, tmp_path):
    # 10 MB of events in one second: more than the kernel's socket buffers hold, so the server must hold back.
    trades = [{"a": i, "p": f"{1 + i / 1e6:.8f}", "q": "100.00000000", "f": 2 * i, "l": 2 * i + 1,
               "T": 1_600_000_000_000 + i, "m": i % 3 == 0, "M": True} for i in range(60_000)]
    (tmp_path / "bigusdt_aggtrades_x.json").write_text(json.dumps(trades))
    r = serve(speed=60, tape_dir=tmp_path)
    client = RawClient(r.ws_url, "/ws/bigusdt@aggTrade", rcvbuf=4096)
    time.sleep(2)  # not reading while all of it is released
    client.sock.settimeout(1)
    events = []
    try:
        for _, payload in client.frames():
            events.append(json.loads(payload))
    except TimeoutError:
        pass
    client.close()
    first = events[0]["a"]
    assert [e["a"] for e in events] == list(range(first, len(trades)))
    assert all(e["p"] == trades[e["a"]]["p"] for e in events)
