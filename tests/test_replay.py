"""The replay server behaves like Binance: endpoints, inclusive cursors, klines, weights and errors.

The oracle for klines is Binance's own recorded XRPETH candles, not the server's code."""

from __future__ import annotations

import json
import shutil
import time
from decimal import Decimal

import pytest
import requests

from replay.server import start_in_thread
from replay.state import Replay
from replay.tape import load_tapes

from .helpers import REPLAY_AUTH, REPLAY_TOKEN, TAPES, Process, free_port, tape


@pytest.fixture
def serve():
    servers = []

    def start(tape_dir=TAPES, shift_minutes=0, **kwargs):
        server, url = start_in_thread(Replay(load_tapes(tape_dir, shift_minutes), **kwargs), token=REPLAY_TOKEN)
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.shutdown()


def get(url, path, **params):
    return requests.get(f"{url}{path}", params=params, timeout=10)


def test_klines_equal_binances_recorded_candles(serve):
    url = serve()
    recorded = tape("xrpeth_candles_1m_20191011-13.json")
    rows, start = [], recorded[0][0]
    while len(rows) < len(recorded):
        page = get(url, "/api/v3/klines", symbol="XRPETH", interval="1m", startTime=start, limit=1000).json()
        assert page, f"no klines from {start}"
        rows += page
        start = page[-1][0] + 60_000
    rows = rows[: len(recorded)]
    assert [r[0] for r in rows] == [c[0] for c in recorded]
    for row, (open_time, o, h, low, c, v) in zip(rows, recorded):
        assert len(row) == 12
        assert row[6] == open_time + 59_999
        for got, want in zip(row[1:5], (o, h, low, c)):
            assert Decimal(got) == Decimal(repr(want)), (open_time, row, (o, h, low, c))
        assert abs(Decimal(row[5]) - Decimal(repr(v))) <= Decimal("1e-8"), (open_time, row[5], v)
    traded = sum(1 for c in recorded if c[5] > 0)
    assert traded == 2469 and sum(1 for r in rows if r[8] > 0) == traded


def test_agg_trades_cursors_are_inclusive_and_ordered(serve):
    url = serve()
    trades = tape("btcusdt_aggtrades_20210404.json")
    first = trades[0]["a"]
    page = get(url, "/api/v3/aggTrades", symbol="BTCUSDT", fromId=first + 10, limit=5).json()
    assert [t["a"] for t in page] == [first + 10 + i for i in range(5)]
    assert page == trades[10:15]
    t0, t1 = trades[20]["T"], trades[40]["T"]
    by_time = get(url, "/api/v3/aggTrades", symbol="BTCUSDT", startTime=t0, endTime=t1, limit=1000).json()
    assert by_time == [t for t in trades if t0 <= t["T"] <= t1]
    newest = get(url, "/api/v3/aggTrades", symbol="BTCUSDT", limit=3).json()
    assert newest == trades[-3:]
    assert len(get(url, "/api/v3/aggTrades", symbol="BTCUSDT").json()) == 500  # Binance's default limit


def test_every_answer_carries_the_used_weight(serve):
    url = serve()
    used = [int(get(url, path, **params).headers["X-MBX-USED-WEIGHT-1M"]) for path, params in [
        ("/api/v3/ping", {}), ("/api/v3/time", {}), ("/api/v3/aggTrades", {"symbol": "ETHUSDT"}),
        ("/api/v3/klines", {"symbol": "ETHUSDT", "interval": "1m"}), ("/api/v3/ticker/price", {"symbol": "ETHUSDT"}),
        ("/api/v3/ticker/price", {}), ("/api/v3/exchangeInfo", {}),
    ]]
    steps = [b - a for a, b in zip([0, *used], used)]
    assert steps == [1, 1, 4, 2, 2, 4, 20]


@pytest.mark.parametrize(("params", "status", "code"), [
    ({}, 400, -1102),
    ({"symbol": "NOPE"}, 400, -1121),
    ({"symbol": "BTCUSDT", "limit": "abc"}, 400, -1100),
    ({"symbol": "BTCUSDT", "limit": "1001"}, 400, -1130),
    ({"symbol": "BTCUSDT", "fromId": "1", "startTime": "1"}, 400, -1128),
    ({"symbol": "BTCUSDT", "startTime": "0", "endTime": str(3_600_001)}, 400, -1127),
])
def test_bad_parameters_get_binance_shaped_errors(serve, params, status, code):
    resp = get(serve(), "/api/v3/aggTrades", **params)
    assert resp.status_code == status
    body = resp.json()
    assert body["code"] == code and isinstance(body["msg"], str) and body["msg"]


def test_past_the_limit_429_then_418_for_a_client_that_keeps_going(serve):
    url = serve(weight_limit=10, window_s=30, ban_s=5)
    assert [get(url, "/api/v3/aggTrades", symbol="BTCUSDT").status_code for _ in range(2)] == [200, 200]
    refused = get(url, "/api/v3/aggTrades", symbol="BTCUSDT")
    assert refused.status_code == 429
    assert refused.json()["code"] == -1003
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    banned = get(url, "/api/v3/ping")
    assert banned.status_code == 418 and int(banned.headers["Retry-After"]) >= 1
    stats = get(url, "/_replay/stats").json()
    assert stats["max_used_weight"] <= 10 and stats["count_429"] == 1 and stats["count_418"] == 1


def test_release_as_if_live_and_shift(serve, tmp_path):
    trades = tape("btcusdt_aggtrades_20210404.json")
    shutil.copy(TAPES / "btcusdt_aggtrades_20210404.json", tmp_path)
    url = serve(tape_dir=tmp_path, shift_minutes=7, speed=10.0)
    time.sleep(1.0)
    visible = get(url, "/api/v3/aggTrades", symbol="BTCUSDT", fromId=trades[0]["a"], limit=1000).json()
    first_t = trades[0]["T"]
    # After ~1 s at 10x, about the first 10 s of the tape are out, with times moved by 7 minutes.
    assert visible and visible[0]["T"] == first_t + 7 * 60_000
    span = (visible[-1]["T"] - visible[0]["T"]) / 1000
    assert 5 <= span <= 20, span
    assert len(visible) < len(trades)
    server_time = get(url, "/api/v3/time").json()["serverTime"]
    assert server_time >= visible[-1]["T"]


def test_tape_symbols_missing_from_exchange_info_get_an_entry(serve, tmp_path):
    shutil.copy(TAPES / "dotusdt_aggtrades_20210404.json", tmp_path / "NEWCOINUSDT_aggtrades_x.json")
    url = serve(tape_dir=tmp_path)
    info = get(url, "/api/v3/exchangeInfo", symbol="NEWCOINUSDT").json()
    [entry] = info["symbols"]
    assert (entry["baseAsset"], entry["quoteAsset"], entry["status"]) == ("NEWCOIN", "USDT", "TRADING")
    assert get(url, "/api/v3/ticker/price", symbol="NEWCOINUSDT").json() == {
        "symbol": "NEWCOINUSDT", "price": tape("dotusdt_aggtrades_20210404.json")[-1]["p"]}


def test_injected_faults_are_served_once(serve):
    url = serve()
    requests.post(f"{url}/_replay/faults", json=[{"kind": "503"}, {"kind": "malformed"}], headers=REPLAY_AUTH,
                  timeout=5).raise_for_status()
    assert get(url, "/api/v3/aggTrades", symbol="BTCUSDT").status_code == 503
    with pytest.raises(json.JSONDecodeError):
        json.loads(get(url, "/api/v3/aggTrades", symbol="BTCUSDT").text)
    assert get(url, "/api/v3/aggTrades", symbol="BTCUSDT").status_code == 200


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Bearer {REPLAY_TOKEN}x", REPLAY_TOKEN,
                                  f"Basic {REPLAY_TOKEN}"])
def test_fault_injection_without_the_token_is_refused_and_injects_nothing(serve, auth):
    url = serve()
    with requests.Session() as session:  # one kept-alive connection: the refused body must not spill over
        refused = session.post(f"{url}/_replay/faults", json=[{"kind": "503"}, {"kind": "503"}], timeout=5,
                               headers={"Authorization": auth} if auth else None)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert "Authorization: Bearer <REPLAY_TOKEN>" in refused.json()["msg"]
        assert session.get(f"{url}/api/v3/aggTrades", params={"symbol": "BTCUSDT"}, timeout=5).status_code == 200
    assert get(url, "/_replay/stats").status_code == 200  # reading the counters needs no token


def test_a_server_given_no_token_refuses_every_fault(tmp_path):
    shutil.copy(TAPES / "btcusdt_aggtrades_20210404.json", tmp_path)
    server, url = start_in_thread(Replay(load_tapes(tmp_path)))
    try:
        for auth in ("Bearer ", "Bearer None", f"Bearer {REPLAY_TOKEN}"):
            assert requests.post(f"{url}/_replay/faults", json={"kind": "503"}, headers={"Authorization": auth},
                                 timeout=5).status_code == 401
        assert get(url, "/api/v3/aggTrades", symbol="BTCUSDT").status_code == 200
    finally:
        server.shutdown()


def test_the_server_process_takes_its_token_from_the_settings(tmp_path):
    shutil.copy(TAPES / "btcusdt_aggtrades_20210404.json", tmp_path)
    port, token = free_port(), f"cli-{time.time_ns()}"
    env = {"REPLAY_TOKEN": token, "REPLAY_PORT": str(port), "REPLAY_WS_PORT": str(free_port()),
           "REPLAY_TAPE_DIR": str(tmp_path)}
    proc = Process("replay.server", env, tmp_path / "replay.log")
    try:
        proc.wait_log("replaying")
        url = f"http://127.0.0.1:{port}"
        fault = {"kind": "503", "symbol": "BTCUSDT"}
        assert requests.post(f"{url}/_replay/faults", json=fault, timeout=5).status_code == 401
        assert requests.post(f"{url}/_replay/faults", json=fault, headers=REPLAY_AUTH, timeout=5).status_code == 401
        assert requests.post(f"{url}/_replay/faults", json=fault, headers={"Authorization": f"Bearer {token}"},
                             timeout=5).status_code == 200
        assert get(url, "/api/v3/aggTrades", symbol="BTCUSDT").status_code == 503
        assert token not in proc.output()
    finally:
        proc.stop()
