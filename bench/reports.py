"""Benchmark of the crypto_reports DAG: one daily report over 24 hours of 1-minute candles for 10 symbols, the
whole `dag.test()` run timed in its own process (as the tests run it), against the same run over an empty day
(what Airflow itself costs: interpreter, parsing the DAGs, the run's bookkeeping)."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg2
from psycopg2.extras import execute_values

from bench.common import TAPES, record
from cryptopipe.settings import get_settings
from ops.dag_run import environment, run_dag
from replay.tape import SymbolTape

SYMBOLS = [f"BENCH{i:02d}" for i in range(10)]
MINUTES = 1440
RUNS = 3
DAY = datetime(2000, 1, 3, tzinfo=timezone.utc)  # far from any pipeline data, so the report holds only these rows


def candle_rows() -> list[tuple]:
    """MINUTES consecutive real XRPETH minutes per symbol, each symbol from another stretch of the 60-hour
    recording, moved to DAY. The minutes are Binance's klines computed from the recorded trades (the replay
    server's): quote volume and trade count included, a minute without trades repeats the last close."""
    trades = json.loads((TAPES / "xrpeth_aggtrades_20191011-13.json").read_text())
    tape = SymbolTape.from_trades("XRPETH", trades, 0)
    klines = tape.klines(tape.times[-1], 60_000, 10_000, start_ms=tape.times[0] // 60_000 * 60_000)
    stride = (len(klines) - MINUTES) // (len(SYMBOLS) - 1)
    rows = []
    for i, symbol in enumerate(SYMBOLS):
        for m, k in enumerate(klines[i * stride: i * stride + MINUTES]):
            start = DAY + timedelta(minutes=m)
            volume, quote = Decimal(k[5]), Decimal(k[7])
            rows.append((symbol, start, start + timedelta(minutes=1), k[1], k[2], k[3], k[4], k[5], k[7], k[8],
                         quote / volume if volume else None))
    return rows


def timed_run(env: dict, start: datetime) -> float:
    conf = {"start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat(), "symbols": SYMBOLS,
            "period": "daily"}
    begin = time.perf_counter()
    states = run_dag(env, "crypto_reports", conf, timeout=900)
    elapsed = time.perf_counter() - begin
    if states.get("daily_report") != "success":
        raise RuntimeError(f"crypto_reports failed: {states}")
    return elapsed


def run(workdir: Path) -> None:
    settings = get_settings()
    home, reports = workdir / "airflow-reports", workdir / "reports"
    env = environment(settings, home, migrate_timeout=600, CRYPTO_REPORTS_DIR=str(reports))
    rows = candle_rows()
    owner = psycopg2.connect(**settings.pg_params("owner"))
    owner.autocommit = True
    cur = owner.cursor()
    cur.execute("DELETE FROM candles_1m WHERE symbol = ANY(%s)", (SYMBOLS,))  # a run that died before its cleanup
    execute_values(cur, "INSERT INTO candles_1m (symbol, window_start, window_end, open, high, low, close, volume, "
                        "quote_volume, trade_count, vwap) VALUES %s", rows, page_size=2000)
    try:
        timed_run(env, DAY + timedelta(days=1))  # warm-up: the first run in a fresh AIRFLOW_HOME syncs the DAGs
        # Interleaved and the median of each: a run is seconds long and this machine's noise is of that order.
        empty, full = [], []
        for _ in range(RUNS):
            empty.append(timed_run(env, DAY + timedelta(days=1)))
            full.append(timed_run(env, DAY))
        page = (reports / "daily" / f"crypto_report_daily_{DAY:%Y%m%dT%H%M}.html").read_text()
        assert page.count(f'data-points="{MINUTES}"') == len(SYMBOLS), "the report did not draw every candle"
    finally:
        cur.execute("DELETE FROM candles_1m WHERE symbol = ANY(%s)", (SYMBOLS,))
        cur.execute("DELETE FROM reports WHERE path LIKE %s", (f"{reports}/%",))
        owner.close()
    record(report_dag_s=round(statistics.median(full), 2), report_dag_empty_day_s=round(statistics.median(empty), 2),
           report_dag_candles=len(rows))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp))
