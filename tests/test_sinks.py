"""The sinks end to end on the native stack: the real connectors into PostgreSQL and the Redis function,
with PostgreSQL, Redis and Kafka Connect failing mid-stream. Oracles: the tapes, computed plainly here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import string
import random
from decimal import Decimal

import psycopg2
import pytest
import redis
import requests
from confluent_kafka import Producer

from ops import connectors, flink_deploy
from replay.server import shift_to_now, start_in_thread
from replay.state import Replay
from replay.tape import load_tapes

from .helpers import (REPLAY_AUTH, REPLAY_TOKEN, TAPES, Process, kill_running, plain_candles, read_topic, restart_service,
                      tape, wait_for)

SHORT = ["btcusdt_aggtrades_20210404.json", "ethusdt_aggtrades_20210404.json", "dotusdt_aggtrades_20210404.json"]


def run_deploy(settings) -> tuple[int, str]:
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    code = connectors.deploy(settings.connect_url, timeout=90, console=Console(file=out, width=200))
    return code, out.getvalue()


def test_deploying_twice_changes_nothing_and_no_secret_is_written(stack, settings):
    code, first = run_deploy(settings)
    assert code == 0, first
    before = {n: requests.get(f"{settings.connect_url}/connectors/{n}", auth=settings.connect_auth, timeout=5).json()
              for n in connectors.load_configs()}
    code, second = run_deploy(settings)
    assert code == 0, second
    assert second.count(": updated") == len(before) and ": created" not in second
    for name, config in connectors.load_configs().items():
        after = requests.get(f"{settings.connect_url}/connectors/{name}", auth=settings.connect_auth, timeout=5).json()
        assert after["config"] == {**config, "name": name}
        assert after["tasks"] == before[name]["tasks"]
        assert config["connection.password"] == "${env:PG_WRITER_PASSWORD}"
        assert settings.pg_writer_password.get_secret_value() not in json.dumps(config)
        for line in ("RUNNING", f"{config['topics']} -> {config['collection.name.format']}"):
            assert line in second


def test_a_poison_record_lands_in_the_dead_letter_topic(stack, settings):
    assert run_deploy(settings)[0] == 0
    marker = f"poison-{random.getrandbits(40)}"
    producer = Producer(settings.kafka_config())
    # jdbc-trades reads the stream function's validated trades: a poison record there is its converter's to catch.
    producer.produce("crypto.trades", key=b"POISON", value=f'{{"{marker}": oops'.encode())
    producer.flush(10)

    def landed():
        return [m for m in read_topic(settings, "crypto.dlq.jdbc-trades") if marker.encode() in m.value()]

    [dead] = wait_for(landed, 60, "the poison record in crypto.dlq.jdbc-trades")
    headers = dict(dead.headers())
    assert headers["__connect.errors.topic"] == b"crypto.trades"
    assert headers["__connect.errors.connector.name"] == b"jdbc-trades"
    assert b"DataException" in headers["__connect.errors.exception.class.name"]
    status = requests.get(f"{settings.connect_url}/connectors/jdbc-trades/status", auth=settings.connect_auth, timeout=5).json()
    assert status["connector"]["state"] == "RUNNING" and {t["state"] for t in status["tasks"]} == {"RUNNING"}


@pytest.fixture
def world(settings, tmp_path):
    """The short tapes under symbols no other run uses, shifted to the present, served like Binance."""
    tag = "".join(random.choices(string.ascii_uppercase, k=5))
    folder = tmp_path / "tape"
    folder.mkdir()
    names = {}
    for name in SHORT:
        symbol = f"{name[:3].upper()}{tag}USDT"
        shutil.copy(TAPES / name, folder / f"{symbol}_aggtrades.json")
        names[symbol] = name
    tapes = load_tapes(folder)
    shift_ms = shift_to_now(tapes, live=False) * 60_000
    replay = Replay(load_tapes(folder, shift_ms // 60_000))
    server, url = start_in_thread(replay, token=REPLAY_TOKEN)
    expected = {s: [dict(t, T=t["T"] + shift_ms) for t in tape(n)] for s, n in names.items()}
    yield {"url": url, "expected": expected, "tag": tag, "replay": replay}
    server.shutdown()


def kill_connect_and_restart(stack) -> None:
    svc = stack.service("connect")
    os.killpg(svc.pid(), signal.SIGKILL)
    wait_for(lambda: svc.pid() is None, 30, "Connect to die")
    svc.start()
    wait_for(svc.is_up, 120, "Connect to come back")


@pytest.fixture
def processes():
    """Processes a test starts; whatever still runs at the end is killed, pass or fail."""
    started: list[Process] = []
    yield started
    kill_running(started)


def test_end_to_end_through_postgres_redis_and_connect_failures(stack, settings, world, tmp_path, processes):
    assert run_deploy(settings)[0] == 0
    symbols = ",".join(world["expected"])
    group = f"test-e2e-{world['tag'].lower()}"
    env = {"VAR_DIR": str(tmp_path / "var"), "REDIS_SINK_GROUP": group + "-redis", "REDIS_STALE_AFTER_S": "5"}
    # The stream engine is the stack's own Flink job, as in production, with the stack's alert thresholds.
    flink_deploy.wait_running(settings)
    sink = Process("functions.redis_sink.sink", env, tmp_path / "redis.log")
    processes.append(sink)
    # Slow answers keep trades flowing for about two minutes, across all three faults.
    requests.post(f"{world['url']}/_replay/faults", json={"kind": "slow", "delay_s": 1.0, "count": 10**6},
                  headers=REPLAY_AUTH, timeout=5).raise_for_status()
    source = Process("functions.binance_source", env | {
        "BINANCE_BASE_URL": world["url"], "BINANCE_SYMBOLS": symbols, "BINANCE_START_TIME": "0",
        "BINANCE_PAGE_LIMIT": "25", "BINANCE_SOURCE_MODE": "rest"}, tmp_path / "source.log")
    processes.append(source)

    owner = psycopg2.connect(**settings.pg_params("owner"))
    owner.autocommit = True

    def rows(sql: str, *params):
        with owner.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    total = sum(len(v) for v in world["expected"].values())
    tags = [f"%{world['tag']}%"]
    wait_for(lambda: rows("SELECT count(*) FROM trades WHERE symbol LIKE %s", *tags)[0][0] > 100, 120, "first rows")
    owner.close()

    restart_service(stack, "postgres", 60)  # PostgreSQL down for a minute mid-stream
    restart_service(stack, "redis", 30)  # then Redis for half a minute
    kill_connect_and_restart(stack)  # then Kafka Connect dies hard
    # No human step: the sinks ride out the outage and the watchdog restarts whatever still failed.

    owner = psycopg2.connect(**settings.pg_params("owner"))
    owner.autocommit = True
    wait_for(lambda: rows("SELECT count(*) FROM trades WHERE symbol LIKE %s", *tags)[0][0] >= total, 300,
             f"{total} trade rows", 1)
    wait_for(lambda: all(connectors.is_running(connectors.status(settings.connect_url, name))
                         for name in connectors.load_configs()), 120, "every connector and task RUNNING by itself")
    assert source.stop() == 0

    for symbol, trades in world["expected"].items():
        got = rows("SELECT agg_id, price, qty, first_trade_id, last_trade_id, trade_time, is_buyer_maker "
                   "FROM trades WHERE symbol = %s ORDER BY agg_id", symbol)
        assert [(r[0], r[1], r[2], r[3], r[4], int(r[5].timestamp() * 1000), r[6]) for r in got] == [
            (t["a"], Decimal(t["p"]), Decimal(t["q"]), t["f"], t["l"], t["T"], t["m"]) for t in trades]

        candles = plain_candles(trades)
        keys = ("open", "high", "low", "close", "volume", "quote_volume", "trade_count", "vwap")

        def candle_rows():
            return {int(r[0].timestamp() * 1000): dict(zip(keys, r[1:])) for r in rows(
                f"SELECT window_start, {', '.join(keys)} FROM candles_1m WHERE symbol = %s", symbol)}

        wait_for(lambda: candle_rows() == candles, 120, f"{symbol} candles to equal the tape's", 1)

        move = Decimal(str(settings.alert_move_pct))
        volume = Decimal(str(settings.alert_quote_volume))
        wanted_alerts = {f"{symbol}:price_move:{ws}" for ws, c in candles.items()
                         if (c["high"] - c["low"]) / c["open"] * 100 >= move}
        wanted_alerts |= {f"{symbol}:volume_spike:{ws}" for ws, c in candles.items() if c["quote_volume"] >= volume}
        wait_for(lambda: {r[0] for r in rows("SELECT alert_id FROM alerts WHERE symbol = %s", symbol)} == wanted_alerts,
                 60, f"{symbol} alerts")

        r = redis.Redis.from_url(settings.redis_url("reader"), decode_responses=True)
        last = trades[-1]
        wait_for(lambda: r.hget(f"price:{symbol}", "agg_id") == str(last["a"]), 60, f"{symbol} price in Redis")
        price = r.hgetall(f"price:{symbol}")
        assert (Decimal(price["price"]), int(price["trade_time"])) == (Decimal(last["p"]), last["T"])
        last_minute = max(candles)
        wait_for(lambda: r.hget(f"candle:{symbol}", "trade_count") == str(candles[last_minute]["trade_count"]), 60,
                 f"{symbol} candle in Redis")
        assert int(r.hget(f"candle:{symbol}", "window_start")) == last_minute
        history = r.lrange(f"prices:{symbol}", 0, -1)
        assert history[0] == f"{last['p']}@{last['T']}"
        wait_for(lambda: r.hget(f"price:{symbol}", "stale") == "1", 30, f"{symbol} marked stale")
    owner.close()
    assert sink.stop() == 0
    assert "Redis unavailable" in sink.output()  # it did meet the outage, and came through it
