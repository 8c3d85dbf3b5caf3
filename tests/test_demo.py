"""`make demo`, exactly as a user runs it, on the bundled tapes and on another tape folder."""

from __future__ import annotations

import random
import re
import shutil
import string
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
import requests

from ops.airflow import AirflowClient
from ops.monitoring import people_login

from .helpers import TAPES, cells, make_demo, tape


def test_make_demo_on_the_bundled_tapes_agrees_end_to_end(stack, settings):
    started = datetime.now(timezone.utc)
    result = make_demo()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo OK: the numbers agree end to end" in result.stdout
    assert "no alert went off during the demo" in result.stdout
    # And Alertmanager, asked apart from the demo, holds no alert that started since, but for an hourly run
    # Airflow's scheduler added while the demo had its DAG unpaused (Airflow asked apart too).
    held = requests.get(f"http://127.0.0.1:{settings.alertmanager_port}/api/v2/alerts", auth=people_login(settings),
                        timeout=5).json()
    client = AirflowClient(settings)
    for alert in [a["labels"] for a in held if datetime.fromisoformat(a["startsAt"]) >= started]:
        assert alert["alertname"] == "AirflowDagRunFailed", alert
        runs = client.call("GET", f"/dags/{alert['dag_id']}/dagRuns", params={"run_type": "scheduled",
                                                                            "state": "failed"})["dag_runs"]
        assert any(r["end_date"] and datetime.fromisoformat(r["end_date"]) >= started for r in runs), alert
    # Independently of the demo's own checks: every tape trade is one row.
    out = result.stdout
    conn = psycopg2.connect(**settings.pg_params("reader"))
    with conn.cursor() as cur:
        for name, symbol in [("btcusdt_aggtrades_20210404.json", "BTCUSDT"), ("xrpeth_aggtrades_20191011-13.json", "XRPETH")]:
            ids = [t["a"] for t in tape(name)]
            cur.execute("SELECT count(*), count(DISTINCT agg_id), min(agg_id), max(agg_id) FROM trades WHERE symbol = %s",
                        (symbol,))
            assert cur.fetchone() == (len(ids), len(ids), ids[0], ids[-1])
            # The summary's row says the same: trades in the tape, rows in trades, every quality check passed.
            row = cells(out, symbol)[0]
            assert row[1] == row[2] == f"{len(ids):,}", row
            assert row[7] == "6/6", row  # the five quality checks and the Kafka reconciliation
        # The quality checks and the report ran in the running Airflow, and their results are where it says.
        runs = dict(re.findall(r"^Airflow run (\w+) (\S+): success", out, flags=re.M))
        assert set(runs) == {"data_quality_check", "crypto_reports", "kafka_reconciliation"}, out[-3000:]
        cur.execute("SELECT count(*), bool_and(passed) FROM quality_results WHERE run_id = %s",
                    (runs["data_quality_check"],))
        assert cur.fetchone() == (5, True)
        # The reconciliation compared the tape's window: its line is in the checks table, passed.
        cur.execute("SELECT check_name, passed FROM quality_results WHERE run_id = %s", (runs["kafka_reconciliation"],))
        assert cur.fetchall() == [("kafka_reconciliation", True)]
        assert cells(out, "kafka_reconciliation")[0][1] == "passed"
        cur.execute("SELECT path FROM reports WHERE run_id = %s", (runs["crypto_reports"],))
        paths = [p for (p,) in cur.fetchall()]
    conn.close()
    assert paths and all(f"): {p}" in out for p in paths)
    html = Path(paths[0]).read_text()
    assert all(symbol in html for symbol in ("BTCUSDT", "DOTUSDT", "ETHUSDT", "XRPETH")) and "<svg" in html
    again = make_demo()  # twice in a row works
    assert again.returncode == 0 and "demo OK" in again.stdout, again.stdout[-3000:]


def test_make_demo_on_another_tape_folder(stack, tmp_path):
    symbol = "DOT" + "".join(random.choices(string.ascii_uppercase, k=5)) + "USDT"
    shutil.copy(TAPES / "dotusdt_aggtrades_20210404.json", tmp_path / f"{symbol.lower()}_aggtrades_x.json")
    result = make_demo(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert symbol in result.stdout and "demo OK" in result.stdout


def test_make_demo_names_a_bad_tape_folder(stack, tmp_path):
    result = make_demo(tmp_path / "missing")
    assert result.returncode != 0
    assert "error: TAPE=" in result.stdout and "aggtrades" in result.stdout
