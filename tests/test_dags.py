"""The Airflow DAGs: integrity without services, and real runs with dag.test() against the real PostgreSQL
holding the pipeline's data (loaded by `make demo`)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from ops.dag_run import DAGS, run_dag

from .helpers import TAPE_SYMBOLS as SYMBOLS


def test_dags_import_with_tags_retries_and_no_connection_at_parse(airflow_env):
    code = f"""
import socket, json
real = socket.socket.connect
def refuse(*a, **k):
    raise AssertionError('a DAG file opened a connection while parsed')
socket.socket.connect = refuse
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(DAGS)!r})
print("RESULT " + json.dumps({{"errors": {{k: str(v) for k, v in bag.import_errors.items()}},
  "dags": {{d.dag_id: [sorted(d.tags), d.catchup, d.doc_md is not None, str(d.start_date.tzinfo) != 'None',
   d.default_args.get('retries', 0)] for d in bag.dags.values()}}}}))
"""
    out = subprocess.run([sys.executable, "-c", code], env=airflow_env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads(lines[-1].removeprefix("RESULT "))
    assert report["errors"] == {}
    assert set(report["dags"]) == {"data_quality_check", "crypto_batch_processing", "crypto_analysis", "crypto_reports",
                                  "kafka_reconciliation"}
    for dag_id, (tags, catchup, has_doc, tz_aware, retries) in report["dags"].items():
        assert tags and catchup is False and has_doc and tz_aware and retries >= 1, dag_id


def test_data_quality_check_passes_clean_data_and_fails_on_the_right_check(airflow_env, pipeline_data, owner_cur):
    cur = owner_cur
    cur.execute("SELECT min(window_start), max(window_start) FROM candles_1m WHERE symbol = ANY(%s)", (SYMBOLS,))
    first, last = cur.fetchone()
    conf = {"start": first.isoformat(), "end": (last + timedelta(minutes=1)).isoformat(), "symbols": SYMBOLS}

    states = run_dag(airflow_env, "data_quality_check", conf)
    assert states == {"validate_params": "success",
                      **{f"check_{c}": "success" for c in ("freshness", "continuity", "validity", "uniqueness", "consistency")}}
    # This DAG's checks (make demo's kafka_reconciliation recorded the same window under its own name).
    checks = ["freshness", "continuity", "validity", "uniqueness", "consistency"]
    cur.execute("SELECT check_name, passed FROM quality_results WHERE window_start = %s AND window_end = %s "
                "AND check_name = ANY(%s)", (conf["start"], conf["end"], checks))
    assert dict(cur.fetchall()) == {c: True for c in checks}

    # One corrupted candle: high below low.
    cur.execute("SELECT window_start, high FROM candles_1m WHERE symbol = 'XRPETH' ORDER BY window_start OFFSET 100 LIMIT 1")
    ws, high = cur.fetchone()
    cur.execute("UPDATE candles_1m SET high = low - 0.00000001 WHERE symbol = 'XRPETH' AND window_start = %s", (ws,))
    try:
        states = run_dag(airflow_env, "data_quality_check", conf)
    finally:
        cur.execute("UPDATE candles_1m SET high = %s WHERE symbol = 'XRPETH' AND window_start = %s", (high, ws))
    assert states["check_validity"] == "failed" and states["check_consistency"] == "failed"
    assert {t: s for t, s in states.items() if s != "failed"} == {
        "validate_params": "success", "check_freshness": "success", "check_continuity": "success",
        "check_uniqueness": "success"}
    cur.execute("SELECT check_name FROM quality_results WHERE window_start = %s AND window_end = %s AND NOT passed "
                "AND check_name = ANY(%s)", (conf["start"], conf["end"], checks))
    assert {r[0] for r in cur.fetchall()} == {"validity", "consistency"}
    cur.execute("SELECT count(*) FROM alerts WHERE rule = 'quality:validity' AND window_start = %s", (conf["start"],))
    assert cur.fetchone()[0] == 1


def test_batch_processing_rolls_up_idempotently_and_applies_retention(airflow_env, pipeline_data, owner_cur):
    cur = owner_cur
    cur.execute("SELECT min(window_start), max(window_start) FROM candles_1m WHERE symbol = ANY(%s)", (SYMBOLS,))
    first, last = cur.fetchone()
    cur.execute("INSERT INTO trades VALUES ('OLDTEST', 1, 1, 1, 1, 1, '2000-01-01T00:00:00Z', true) "
                "ON CONFLICT DO NOTHING")
    conf = {"start": first.isoformat(), "end": (last + timedelta(minutes=1)).isoformat(), "trade_retention_days": 3650}
    assert run_dag(airflow_env, "crypto_batch_processing", conf) == {
        "validate_params": "success", "rollup_candles_1h": "success", "rollup_candles_1d": "success",
        "trades_retention": "success"}

    # The oracle: hourly and daily candles computed here from candles_1m.
    cur.execute("SELECT symbol, window_start, open, high, low, close, volume, quote_volume, trade_count "
                "FROM candles_1m WHERE symbol = ANY(%s) ORDER BY window_start", (SYMBOLS,))
    minutes = cur.fetchall()
    for table, unit in (("candles_1h", "hour"), ("candles_1d", "day")):
        expected: dict = {}
        for sym, ws, o, h, low, c, v, qv, n in minutes:
            bucket = ws.replace(minute=0, second=0, microsecond=0)
            if unit == "day":
                bucket = bucket.replace(hour=0)
            e = expected.get((sym, bucket))
            if e is None:
                expected[(sym, bucket)] = [o, h, low, c, v, qv, n]
            else:
                expected[(sym, bucket)] = [e[0], max(e[1], h), min(e[2], low), c, e[4] + v, e[5] + qv, e[6] + n]
        cur.execute(f"SELECT symbol, window_start, open, high, low, close, volume, quote_volume, trade_count "
                    f"FROM {table} WHERE symbol = ANY(%s)", (SYMBOLS,))
        got = {(r[0], r[1]): list(r[2:]) for r in cur.fetchall()}
        assert got == expected, table

    cur.execute("SELECT count(*) FROM trades WHERE symbol = 'OLDTEST'")
    assert cur.fetchone()[0] == 0  # past retention
    cur.execute("SELECT count(*) FROM trades WHERE symbol = 'XRPETH'")
    kept = cur.fetchone()[0]
    assert kept == 12_477

    cur.execute("SELECT * FROM candles_1h WHERE symbol = ANY(%s) ORDER BY 1, 2", (SYMBOLS,))
    before = cur.fetchall()
    run_dag(airflow_env, "crypto_batch_processing", conf)  # idempotent for its interval
    cur.execute("SELECT * FROM candles_1h WHERE symbol = ANY(%s) ORDER BY 1, 2", (SYMBOLS,))
    assert cur.fetchall() == before


def trades_by_symbol(cur) -> dict[str, int]:
    cur.execute("SELECT symbol, count(*) FROM trades GROUP BY symbol")
    return dict(cur.fetchall())


def tape_window(cur) -> dict:
    cur.execute("SELECT min(window_start), max(window_start) FROM candles_1m WHERE symbol = ANY(%s)", (SYMBOLS,))
    first, last = cur.fetchone()
    return {"start": first.isoformat(), "end": (last + timedelta(minutes=1)).isoformat()}


def test_no_run_conf_reaches_an_sql_identifier(airflow_env, pipeline_data, owner_cur):
    """The rollup took its table and bucket from params, and a run's conf overrides params: these keys must
    change nothing now."""
    cur = owner_cur
    cur.execute("SELECT * FROM candles_1h WHERE symbol = ANY(%s) ORDER BY 1, 2", (SYMBOLS,))
    hours = cur.fetchall()
    trades = trades_by_symbol(cur)
    conf = {**tape_window(cur), "trade_retention_days": 3650, "table": "trades; DROP TABLE trades; --",
            "unit": "day') , pg_sleep(30) --", "params": {"table": "trades"}}
    assert run_dag(airflow_env, "crypto_batch_processing", conf) == {
        "validate_params": "success", "rollup_candles_1h": "success", "rollup_candles_1d": "success",
        "trades_retention": "success"}
    assert trades_by_symbol(cur) == trades
    cur.execute("SELECT * FROM candles_1h WHERE symbol = ANY(%s) ORDER BY 1, 2", (SYMBOLS,))
    assert cur.fetchall() == hours


def test_a_negative_retention_is_refused_and_deletes_nothing(airflow_env, pipeline_data, owner_cur):
    trades = trades_by_symbol(owner_cur)
    conf = {**tape_window(owner_cur), "trade_retention_days": -5}
    with pytest.raises(RuntimeError) as refused:  # the run is never created: no task states to report
        run_dag(airflow_env, "crypto_batch_processing", conf)
    assert ("Invalid input for param trade_retention_days: -5 is less than the minimum of 1"
            in str(refused.value)), str(refused.value)[-3000:]
    assert trades_by_symbol(owner_cur) == trades


def test_an_end_in_the_future_fails_the_run_before_anything_is_deleted(airflow_env, pipeline_data, owner_cur):
    cur = owner_cur
    # A trade of an hour ago: an end in 2999 with a day's retention would delete it (and every tape trade).
    cur.execute("INSERT INTO trades VALUES ('FUTURETEST', 1, 1, 1, 1, 1, now() - interval '1 hour', true) "
                "ON CONFLICT DO NOTHING")
    try:
        trades = trades_by_symbol(cur)
        conf = {"start": tape_window(cur)["start"], "end": "2999-01-01T00:00:00+00:00", "trade_retention_days": 1}
        assert run_dag(airflow_env, "crypto_batch_processing", conf) == {
            "validate_params": "failed", "rollup_candles_1h": "upstream_failed",
            "rollup_candles_1d": "upstream_failed", "trades_retention": "upstream_failed"}
        assert trades_by_symbol(cur) == trades
        assert trades["FUTURETEST"] == 1
    finally:
        cur.execute("DELETE FROM trades WHERE symbol = 'FUTURETEST'")


def test_a_bad_window_fails_the_checks_and_the_analysis_before_they_touch_data(airflow_env, pipeline_data, owner_cur):
    cur = owner_cur
    window = tape_window(cur)
    backwards = {"start": window["end"], "end": window["start"], "symbols": SYMBOLS}
    states = run_dag(airflow_env, "data_quality_check", backwards)
    assert states.pop("validate_params") == "failed"
    assert set(states.values()) == {"upstream_failed"}
    # No result for the backwards window (other runs may have recorded windows starting at the same time).
    cur.execute("SELECT count(*) FROM quality_results WHERE window_start = %s AND window_end = %s",
                (backwards["start"], backwards["end"]))
    assert cur.fetchone()[0] == 0

    cur.execute("SELECT count(*) FROM indicators_1m")
    indicators = cur.fetchone()[0]
    future = {"start": window["start"], "end": "2999-01-01T00:00:00Z", "symbols": "XRPETH"}
    assert run_dag(airflow_env, "crypto_analysis", future) == {"compute_indicators": "failed"}
    cur.execute("SELECT count(*) FROM indicators_1m")
    assert cur.fetchone()[0] == indicators


def test_analysis_indicators_equal_a_computation_from_the_closes(airflow_env, pipeline_data, owner_cur):
    import math
    import statistics

    cur = owner_cur
    cur.execute("SELECT window_start, close FROM candles_1m WHERE symbol = 'XRPETH' ORDER BY window_start")
    series = cur.fetchall()
    conf = {"start": series[0][0].isoformat(), "end": (series[-1][0] + timedelta(minutes=1)).isoformat(),
            "symbols": ["XRPETH"]}
    assert run_dag(airflow_env, "crypto_analysis", conf) == {"compute_indicators": "success"}
    cur.execute("SELECT window_start, sma_20, ema_20, rsi_14, volatility_60 FROM indicators_1m "
                "WHERE symbol = 'XRPETH' ORDER BY window_start")
    got = cur.fetchall()
    assert [g[0] for g in got] == [s[0] for s in series]
    closes = [float(c) for _, c in series]

    def close_enough(a, b):
        return (a is None and b is None) or (a is not None and b is not None and math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12))

    ema = None
    gains, losses = [], []
    for i, (row, close) in enumerate(zip(got, closes)):
        sma = statistics.fmean(closes[i - 19:i + 1]) if i >= 19 else None
        ema = sma if i == 19 else (ema * (1 - 2 / 21) + close * 2 / 21 if i > 19 else None)
        if i:
            gains.append(max(closes[i] - closes[i - 1], 0.0))
            losses.append(max(closes[i - 1] - closes[i], 0.0))
        if i == 14:
            ag, al = statistics.fmean(gains), statistics.fmean(losses)
        elif i > 14:
            ag, al = (ag * 13 + gains[-1]) / 14, (al * 13 + losses[-1]) / 14
        rsi = (100.0 if al == 0 else 100 - 100 / (1 + ag / al)) if i >= 14 else None
        vol = statistics.stdev([math.log(closes[k] / closes[k - 1]) for k in range(i - 59, i + 1)]) * 100 if i >= 60 else None
        for value, want in zip(row[1:], (sma, ema, rsi, vol)):
            assert close_enough(value, want), (i, row, (sma, ema, rsi, vol))
