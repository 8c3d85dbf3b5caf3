"""The source's WebSocket mode against the replay's streams and the real broker: every trade once, in id order,
across every seam (start, reconnects, dropped connections, stalled streams, bad frames, duplicates, events out of
order, the server's planned shutdowns, kill -9), with the tapes as the oracle."""

from __future__ import annotations

import random

import requests

from .helpers import (SHORT_TAPES, XRP_TAPE, assert_exactly_the_tapes, read_topic, tape, topic_size, wait_for)

SYMBOLS = "BTCUSDT,ETHUSDT,DOTUSDT"


def counters(harness) -> dict:
    try:
        return harness.status()["counters"]
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
        return {}


def replay_stats(harness) -> dict:
    return requests.get(f"{harness.url}/_replay/stats", timeout=5).json()


def test_every_fault_of_the_streams_still_gives_every_trade_once(settings, stack, harness):
    # The short tapes (1,910 trades over 91 s) at 5x: ~18 s of live streams; the first seconds come from REST.
    harness.serve(SHORT_TAPES, ws={}, speed=5)
    proc = harness.start(SYMBOLS, source_ws_streams_per_connection=2, source_ws_silence_s=1.5)
    wait_for(lambda: counters(harness).get("stream_trades", 0) > 50, 30, "trades from the streams")
    harness.fault({"kind": "ws_malformed", "symbol": "BTCUSDT", "variant": "bad_price"},
                  {"kind": "ws_malformed", "symbol": "ETHUSDT", "variant": "not_json"},
                  {"kind": "ws_duplicate", "symbol": "BTCUSDT"}, {"kind": "ws_out_of_order", "symbol": "BTCUSDT"})
    wait_for(lambda: counters(harness).get("bad_frames", 0) >= 2 and counters(harness).get("ws_gaps", 0) >= 1,
             20, "the bad frames and the gap they leave")
    harness.fault({"kind": "ws_stall", "symbol": "BTCUSDT"})
    wait_for(lambda: counters(harness).get("silent_streams", 0) >= 1, 20, "the stalled stream to be noticed")
    harness.fault({"kind": "ws_drop", "symbol": "ETHUSDT"})
    wait_for(lambda: counters(harness).get("ws_reconnects", 0) >= 1, 20, "a reconnect")
    harness.wait_complete(timeout=120)
    assert proc.stop() == 0
    assert_exactly_the_tapes(settings, harness.topic, harness.expected)

    c = counters(harness)
    assert c["trades_produced"] == harness.total()
    assert c["ws_duplicates"] >= 1  # the duplicate (and the late half of the swapped pair)
    # Most trades came from the streams, not from REST: it is a WebSocket run.
    assert c["stream_trades"] > harness.total() / 2, c
    assert c["stream_trades"] + c["backfilled_trades"] == harness.total(), c
    status = harness.status()
    assert {s: v["mode"] for s, v in status["symbols"].items()} == dict.fromkeys(harness.expected, "live")
    assert status["symbols"]["ETHUSDT"]["reconnects"] >= 1 and status["symbols"]["DOTUSDT"]["reconnects"] == 0
    assert len(status["connections"]) == 2
    dead = read_topic(settings, harness.dlq)
    reasons = {dict(m.headers())["error.reason"].decode(): m for m in dead}
    bad_price = [m for r, m in reasons.items() if "field p" in r]
    not_json = [m for r, m in reasons.items() if "not JSON" in r]
    assert len(bad_price) == 1 and bad_price[0].key() == b"BTCUSDT" and b"not-a-number" in bad_price[0].value()
    assert len(not_json) == 1
    stats = replay_stats(harness)["ws"]
    assert stats["closed_rate_limit"] == 0 and stats["refused_429"] == 0  # within Binance's limits throughout


def test_connections_the_server_closes_every_few_seconds_lose_nothing(settings, stack, harness):
    # Binance closes every connection after 24 hours, announced by serverShutdown; here after 3 s.
    harness.serve(SHORT_TAPES, ws={"lifetime_s": 3}, speed=5)
    proc = harness.start(SYMBOLS)
    harness.wait_complete(timeout=120)
    wait_for(lambda: counters(harness).get("server_shutdowns", 0) >= 3, 30, "three planned shutdowns")
    assert proc.stop() == 0
    assert_exactly_the_tapes(settings, harness.topic, harness.expected)
    c = counters(harness)
    assert c["ws_reconnects"] >= 3 and c["stream_trades"] > harness.total() / 2, c
    assert replay_stats(harness)["ws"]["closed_lifetime"] >= 3
    assert "announced its shutdown" in proc.output()


def test_kill_9_while_streaming_then_resume_without_gap_or_duplicate(settings, stack, harness):
    trades = tape(XRP_TAPE["XRPETH"])
    span_s = (trades[-1]["T"] - trades[0]["T"]) / 1000
    harness.serve(XRP_TAPE, ws={}, speed=span_s / 25)  # the two days of the tape in 25 s
    points = sorted(random.Random().sample(range(1500, harness.total() - 4000), 2))
    sizes = []
    for point in points:
        proc = harness.start("XRPETH")
        wait_for(lambda: topic_size(settings, harness.topic) >= point, 60, f"{point} trades", interval=0.02)
        proc.kill9()
        sizes.append(topic_size(settings, harness.topic))
    assert sizes[-1] < harness.total(), f"the kills came too late to test anything: {points}, {sizes}"
    proc = harness.start("XRPETH")
    harness.wait_complete()
    assert proc.stop() == 0
    assert "resuming after agg id" in proc.output(), f"kill points {points}"
    assert_exactly_the_tapes(settings, harness.topic, harness.expected)


def test_without_streams_it_polls_rest_until_they_come_back(settings, stack, harness):
    harness.serve(SHORT_TAPES)  # REST only: the stream URL has nobody listening
    proc = harness.start(SYMBOLS, binance_source_mode="websocket")
    harness.wait_complete(timeout=60)
    wait_for(lambda: counters(harness).get("ws_connect_errors", 0) >= 2, 30, "the failed connection attempts")
    assert proc.stop() == 0
    assert_exactly_the_tapes(settings, harness.topic, harness.expected)
    status = harness.status()
    assert {v["mode"] for v in status["symbols"].values()} == {"down"}
    assert counters(harness).get("stream_trades", 0) == 0


def test_one_connection_per_stream_when_asked(settings, stack, harness):
    """One stream per connection: three connections for the three listed symbols (the unlisted one gets
    none), each within Binance's five messages a second (the replay closes a connection past it)."""
    harness.serve(SHORT_TAPES, ws={"msg_rate": 5}, speed=5)
    proc = harness.start("BTCUSDT,ETHUSDT,DOTUSDT,NOPEUSDT", source_ws_streams_per_connection=1)
    harness.wait_complete(timeout=120)
    assert proc.stop() == 0
    assert_exactly_the_tapes(settings, harness.topic, harness.expected)
    stats = replay_stats(harness)["ws"]
    assert stats["connections_total"] == 3 and stats["closed_rate_limit"] == 0, stats
