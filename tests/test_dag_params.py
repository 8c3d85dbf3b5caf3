"""The DAGs' params without services: their JSON schemas, the checks in dags/crypto_params.py, and SQL whose
identifiers no run conf can reach. Airflow runs in a process of its own (importing it configures logging
and creates an Airflow home), with a scratch home and no database."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from cryptopipe.settings import ROOT
from ops.dag_run import DAGS

# Each probe is Python evaluated in the child, after `import crypto_params as p` and with `bag`, the DagBag;
# `conf(dag_id, conf)` is how Airflow checks a run's conf when the run is triggered and when a task starts.
CHILD = r"""
import copy, json, sys
from datetime import datetime, timedelta, timezone
from airflow.dag_processing.dagbag import DagBag
sys.path.append(sys.argv[1])
import crypto_params as p

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)

def conf(dag_id, conf, task=None):
    # What a task runs first (airflow.sdk.definitions.param.process_params): the DAG's params, the task's, the
    # run's conf over them, validated. On copies: validating sets the Params' values.
    params = copy.deepcopy(bag.dags[dag_id].params)
    params.update(copy.deepcopy(task.params) if task else {})
    params.update(conf)
    return params.validate()

def render(dag_id, task_id, run_conf):
    dag = bag.dags[dag_id]
    task = dag.get_task(task_id)
    return task.render_template(task.sql, {"params": conf(dag_id, run_conf, task)}, dag.get_template_env())

def native(dag_id, template, run_conf):
    dag = bag.dags[dag_id]
    return dag.get_template_env(force_sandboxed=False).from_string(template).render(params=conf(dag_id, run_conf))

out = {}
for name, probe in json.loads(sys.stdin.read()).items():
    try:
        out[name] = {"value": eval(probe)}
    except Exception as err:
        out[name] = {"error": f"{type(err).__name__}: {err}"}
print("RESULT " + json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """probe({name: python}) -> {name: {"value": ...} or {"error": "Type: message"}}, in one Airflow process."""
    home = tmp_path_factory.mktemp("airflow")

    def run(probes: dict[str, str]) -> dict:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "AIRFLOW_HOME": str(home),
               "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS)}
        result = subprocess.run([sys.executable, "-c", CHILD, str(DAGS)], input=json.dumps(probes), env=env,
                                capture_output=True, text=True, timeout=300)
        lines = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, result.stdout[-3000:] + result.stderr[-3000:]
        return json.loads(lines[-1].removeprefix("RESULT "))

    return run


def test_window_checks_refuse_a_future_end_and_a_start_not_before_the_end(probe):
    got = probe({
        "past": "p.check_window('2026-05-01T00:00:00+00:00', '2026-05-02T00:00:00Z', NOW)",
        "datetimes": "p.check_window(NOW - timedelta(hours=1), NOW, NOW)",
        "no start": "p.check_window(None, NOW, NOW)",
        "end within the tolerance": "p.check_window(None, NOW + timedelta(minutes=9), NOW)",
        "far future": "p.check_window(None, '2999-01-01T00:00:00Z', NOW)",
        "just past the tolerance": "p.check_window(None, NOW + timedelta(minutes=11), NOW)",
        "start after end": "p.check_window('2026-05-02T00:00:00Z', '2026-05-01T00:00:00Z', NOW)",
        "start equals end": "p.check_window(NOW, NOW, NOW)",
        "no zone": "p.check_window(None, '2026-05-01T00:00:00', NOW)",
        "not a time": "p.check_window(None, 'yesterday', NOW)",
        "no end": "p.check_window(None, None, NOW)",
        "no retries": "issubclass(p.BadParams, __import__('airflow.sdk.exceptions').sdk.exceptions.AirflowFailException)",
    })
    for ok in ("past", "datetimes", "no start", "end within the tolerance"):
        assert got[ok] == {"value": None}, ok
    assert got["no retries"] == {"value": True}
    errors = {name: got[name].get("error", "") for name in got}
    assert errors["far future"].startswith("BadParams: end 2999-01-01T00:00:00+00:00 is in the future")
    assert "at most 10 minutes from now" in errors["far future"]
    assert "is in the future" in errors["just past the tolerance"]
    assert errors["start after end"] == ("BadParams: start 2026-05-02T00:00:00+00:00 is not before end "
                                         "2026-05-01T00:00:00+00:00")
    assert "is not before end" in errors["start equals end"]
    assert errors["no zone"] == "BadParams: end '2026-05-01T00:00:00' is not a timestamp with a time zone"
    assert errors["not a time"] == "BadParams: end 'yesterday' is not an ISO-8601 timestamp"
    assert errors["no end"] == "BadParams: end None is not a timestamp with a time zone"


def test_symbols_are_a_list_or_a_comma_separated_string_of_symbols(probe):
    got = probe({
        "none": "p.symbol_list(None)",
        "empty": "p.symbol_list([])",
        "list": "p.symbol_list(['BTCUSDT', 'XRPETH'])",
        "string": "p.symbol_list(' BTCUSDT, XRPETH ,')",
        "slack ping": "p.symbol_list(['<!channel>'])",
        "trailing newline": "p.symbol_list(['XRPETH\\n'])",
        "sql": "p.symbol_list(\"BTCUSDT'; DROP TABLE trades; --\")",
        "number": "p.symbol_list(5)",
    })
    assert got["none"] == got["empty"] == {"value": None}
    assert got["list"] == got["string"] == {"value": ["BTCUSDT", "XRPETH"]}
    assert got["slack ping"]["error"] == "BadParams: symbol '<!channel>' is not 2-20 upper-case letters and digits"
    assert got["trailing newline"]["error"].startswith("BadParams: symbol 'XRPETH\\n' is not")
    assert got["sql"]["error"].startswith("BadParams: symbol \"BTCUSDT'; DROP TABLE trades; --\" is not")
    assert got["number"]["error"].startswith("BadParams: symbols 5 is not a list")


def test_a_bad_conf_is_refused_by_the_params_json_schema(probe):
    """What Airflow runs when a run is triggered (REST API, UI, CLI, dag.test): a conf that breaks a schema
    never becomes a run."""
    start, end = "2026-05-01T00:00:00+00:00", "2026-05-01T01:00:00Z"
    good = {"start": start, "end": end}
    cases = {
        "batch good": ("crypto_batch_processing", {**good, "trade_retention_days": 3650}),
        "batch default days": ("crypto_batch_processing", {}),
        "batch negative days": ("crypto_batch_processing", {"trade_retention_days": -5}),
        "batch zero days": ("crypto_batch_processing", {"trade_retention_days": 0}),
        "batch too many days": ("crypto_batch_processing", {"trade_retention_days": 3651}),
        "batch days as text": ("crypto_batch_processing", {"trade_retention_days": "30; DELETE FROM trades"}),
        "batch naive start": ("crypto_batch_processing", {"start": "2026-05-01T00:00:00"}),
        "batch sql in end": ("crypto_batch_processing", {"end": "2026-05-01T00:00:00Z'; DROP TABLE trades; --"}),
        "batch number end": ("crypto_batch_processing", {"end": 1}),
        "quality symbols list": ("data_quality_check", {**good, "symbols": ["BTCUSDT", "XRPETH"]}),
        "quality symbols string": ("data_quality_check", {**good, "symbols": "BTCUSDT,XRPETH"}),
        "quality slack symbol": ("data_quality_check", {"symbols": ["<!channel>"]}),
        "quality sql symbols": ("data_quality_check", {"symbols": "BTCUSDT'; DROP TABLE trades; --"}),
        "analysis lower case": ("crypto_analysis", {"symbols": ["btcusdt"]}),
        "reports daily": ("crypto_reports", {**good, "period": "daily", "symbols": ["XRPETH"]}),
        "reports weekly": ("crypto_reports", {"period": "weekly"}),
    }
    got = probe({name: f"conf({dag_id!r}, {conf!r})" for name, (dag_id, conf) in cases.items()})
    assert got["batch good"]["value"] == {**good, "trade_retention_days": 3650}
    assert got["batch default days"]["value"] == {"start": None, "end": None, "trade_retention_days": 30}
    assert got["quality symbols list"]["value"]["symbols"] == ["BTCUSDT", "XRPETH"]
    assert got["quality symbols string"]["value"]["symbols"] == "BTCUSDT,XRPETH"
    assert got["reports daily"]["value"]["period"] == "daily"
    refused = {name: r["error"] for name, r in got.items() if "error" in r}
    assert set(refused) == {"batch negative days", "batch zero days", "batch too many days", "batch days as text",
                            "batch naive start", "batch sql in end", "batch number end", "quality slack symbol",
                            "quality sql symbols", "analysis lower case", "reports weekly"}
    for name, error in refused.items():
        assert error.startswith("ParamValidationError: Invalid input for param "), (name, error)
    assert refused["batch negative days"].startswith(
        "ParamValidationError: Invalid input for param trade_retention_days: -5 is less than the minimum of 1")
    assert "3651 is greater than the maximum of 3650" in refused["batch too many days"]
    assert "param symbols: '<!channel>' does not match" in refused["quality slack symbol"]
    assert "param period: 'weekly' is not one of" in refused["reports weekly"]


def test_no_run_conf_reaches_an_sql_identifier(probe):
    """Old code pasted params.table and params.unit into the rollup; a conf overrides params, so it could
    name any table. Now the rollup files fix them, whatever the conf says."""
    evil = {"table": "trades; DROP TABLE trades; --", "unit": "day') , pg_sleep(10) --"}
    got = probe({"1h": f"render('crypto_batch_processing', 'rollup_candles_1h', {evil!r})",
                 "1d": f"render('crypto_batch_processing', 'rollup_candles_1d', {evil!r})",
                 "retention": f"render('crypto_batch_processing', 'trades_retention', {evil!r})"})
    for name, table, unit in (("1h", "candles_1h", "hour"), ("1d", "candles_1d", "day")):
        sql = got[name]["value"]
        assert f"INSERT INTO {table} AS r" in sql and f"date_trunc('{unit}', window_start)" in sql
        assert "DROP" not in sql and "pg_sleep" not in sql and "{{" not in sql
    assert "SELECT delete_old_trades(%(end)s::timestamptz, %(days)s::integer)" in got["retention"]["value"]


def test_symbols_reach_the_checks_as_a_list(probe):
    template = "{{ params.symbols | symbol_list }}"
    got = probe({"string": f"native('data_quality_check', {template!r}, {{'symbols': 'BTCUSDT, XRPETH'}})",
                 "none": f"native('data_quality_check', {template!r}, {{}})"})
    assert got == {"string": {"value": ["BTCUSDT", "XRPETH"]}, "none": {"value": None}}


def test_the_dags_symbol_rule_is_the_pipelines():
    """dags/crypto_params.py writes cryptopipe.schemas.SYMBOL again (compose's Airflow has dags/ only)."""
    from cryptopipe.schemas import SYMBOL

    spec = importlib.util.spec_from_file_location("crypto_params_text", ROOT / "dags" / "crypto_params.py")
    text = spec.loader.get_source("crypto_params_text")
    [dags_rule] = re.findall(r'^SYMBOL = "(.*)"$', text, flags=re.M)
    for candidate in ("BTCUSDT", "X", "AB", "A" * 20, "A" * 21, "btcusdt", "BTC-USDT", "<!channel>", "BTC USDT", "1INCHUSDT"):
        assert bool(re.fullmatch(dags_rule, candidate)) == bool(SYMBOL.match(candidate)), candidate
