"""`make run` (live mode) against the replay server playing at live speed, then `make stop`."""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import time
from decimal import Decimal

import psycopg2

from ops import dag_schedule, functions_ctl
from ops.airflow import AirflowClient
from cryptopipe.settings import ROOT
from replay.server import shift_to_now, start_in_thread
from replay.state import Replay
from replay.tape import load_tapes
from replay.ws import start_ws_in_thread

from .helpers import TAPES, cells, tape, wait_for


def test_make_run_follows_a_live_market_and_make_stop_stops_it(stack, settings, tmp_path):
    symbol = "BTC" + "".join(random.choices(string.ascii_uppercase, k=5)) + "USDT"
    shutil.copy(TAPES / "btcusdt_aggtrades_20210404.json", tmp_path / f"{symbol}_aggtrades.json")
    raw = load_tapes(tmp_path)
    shift = shift_to_now(raw, live=True)
    replay = Replay(load_tapes(tmp_path, shift), speed=1.0)
    server, url = start_in_thread(replay)
    streams, ws_url = start_ws_in_thread(replay)
    trades = {t["a"]: dict(t, T=t["T"] + shift * 60_000) for t in tape("btcusdt_aggtrades_20210404.json")}
    # make run's source reads the WebSocket streams (its default mode) and backfills over REST.
    env = {**os.environ, "BINANCE_BASE_URL": url, "BINANCE_WS_URL": ws_url, "BINANCE_SYMBOLS": symbol}
    airflow = AirflowClient(settings)
    scheduled = [d["dag_id"] for d in dag_schedule.scheduled(airflow)]
    assert {"crypto_batch_processing", "data_quality_check", "kafka_reconciliation"} <= set(scheduled)
    # All paused but one, which the user had unpaused: make stop must leave that one running.
    mine = "crypto_analysis"
    for dag_id in scheduled:
        airflow.set_paused(dag_id, dag_id != mine)
    try:
        run = subprocess.run(["make", "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        for name in functions_ctl.PIPELINE:
            assert functions_ctl.running_pid(settings, name), name
        # The batch layer runs too: every scheduled DAG is unpaused.
        assert not any(airflow.call("GET", f"/dags/{dag_id}")["is_paused"] for dag_id in scheduled)
        conn = psycopg2.connect(**settings.pg_params("reader"))
        conn.autocommit = True
        cur = conn.cursor()

        def loaded():
            cur.execute("SELECT agg_id, price, qty, trade_time FROM trades WHERE symbol = %s ORDER BY agg_id", (symbol,))
            return cur.fetchall()

        wait_for(lambda: len(loaded()) >= 150, 90, "150 live trades in PostgreSQL", 1)
        rows = loaded()
        ids = [r[0] for r in rows]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # no gap, no duplicate
        for agg_id, price, qty, trade_time in rows:
            t = trades[agg_id]
            assert (price, qty, int(trade_time.timestamp() * 1000)) == (Decimal(t["p"]), Decimal(t["q"]), t["T"])
        report = json.loads((settings.var_dir / "run" / "source.json").read_text())
        # Whole-minute shifting leaves the replay's clock up to a minute behind the wall clock.
        clock_gap_ms = time.time() * 1000 - replay.now_ms()
        assert report["symbols"][symbol]["lag_ms"] - clock_gap_ms < 5_000, report  # live: seconds behind
        assert report["mode"] == "websocket" and report["symbols"][symbol]["mode"] == "live", report
        # From the stream, not from REST polling (the report is rewritten every few seconds).
        wait_for(lambda: json.loads((settings.var_dir / "run" / "source.json").read_text())["counters"].get(
            "stream_trades", 0) > 100, 30, "100 trades from the stream in the source's report", 1)
        conn.close()
    finally:
        stop = subprocess.run(["make", "stop"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        server.shutdown()
        streams.stop()
    assert stop.returncode == 0, stop.stderr
    for name in functions_ctl.MODULES:
        assert functions_ctl.running_pid(settings, name) is None, name
    # make stop paused what make run unpaused, and left the user's own choice alone.
    paused = {dag_id: airflow.call("GET", f"/dags/{dag_id}")["is_paused"] for dag_id in scheduled}
    assert paused == {dag_id: dag_id != mine for dag_id in scheduled}, paused
    airflow.set_paused(mine, True)
    status = subprocess.run(["make", "status"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "300"})
    assert "running" not in status.stdout.split("Functions")[1].split("Kafka topics")[0]
    # The source's last report, per symbol: mode, produced, rate, lag, next id, last seam, reconnects.
    # (The freshness table has a row for the symbol too; the source's has eight cells.)
    rows = [row for row in cells(status.stdout, symbol) if len(row) == 8]
    assert len(rows) == 1 and rows[0][1] == "live" and rows[0][7] == "0", status.stdout
    assert int(rows[0][2].replace(",", "")) >= 150
