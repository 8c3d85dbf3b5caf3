"""
### data_quality_check

Hourly data-quality checks on the candles and trades the pipeline loaded, for the DAG run's data interval
(or `params.start` / `params.end` when given, e.g. for a replayed tape; `params.symbols` narrows them). The checks are declared as data in
`CHECKS` and each runs as an `SQLCheckOperator` (common-sql) with the read-only `crypto_reader` connection:

| check | passes when |
|---|---|
| freshness | the interval has candles, the newest in its last 5 minutes |
| continuity | no pipeline gap: no minute with trades but without its candle (exchange-wide gaps pass) |
| validity | low <= open, close <= high; volume >= 0; trade_count > 0 |
| uniqueness | one candle per symbol and minute, one trade per symbol and id |
| consistency | candles recomputed from `trades` equal `candles_1m` |

A failed check fails its task. Every result is written to `quality_results`, and a failure also writes an
alert (`quality:<check>:<interval start>`) into `alerts`, with the `crypto_airflow` connection
(`sql/quality_result.sql`, `sql/quality_alert.sql`). Connections come from the environment:
`AIRFLOW_CONN_CRYPTO_READER`, `AIRFLOW_CONN_CRYPTO_AIRFLOW`.

The params' JSON schemas refuse a bad conf when the run is triggered (`start`/`end` ISO-8601 with zone,
`symbols` a list or comma-separated string of symbols); a first task, `validate_params`, fails the run before
any check when the window is impossible (an end in the future, a start not before the end).
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.common.sql.operators.sql import SQLCheckOperator
from airflow.sdk import DAG, task

# crypto_params sits next to this file. Airflow's processes put this folder on sys.path; a bare DagBag
# (ops.dag_run, the tests) does not.
if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))
from crypto_params import check_window, symbol_list, symbols_param, window_params  # noqa: E402

SQL = Path(__file__).parent / "sql"

CHECKS = [
    {"name": "freshness", "sql": "sql/quality_freshness.sql"},
    {"name": "continuity", "sql": "sql/quality_continuity.sql"},
    {"name": "validity", "sql": "sql/quality_validity.sql"},
    {"name": "uniqueness", "sql": "sql/quality_uniqueness.sql"},
    {"name": "consistency", "sql": "sql/quality_consistency.sql"},
]

# The interval: explicit params win; a manual run (zero-length interval) checks the hour before it.
START = "{{ params.start or (data_interval_start if data_interval_start < data_interval_end else data_interval_end - macros.timedelta(hours=1)) }}"
END = "{{ params.end or data_interval_end }}"
SYMBOLS = "{{ params.symbols | symbol_list }}"


class IntervalCheckOperator(SQLCheckOperator):
    """SQLCheckOperator whose query parameters are templated too, so values stay query parameters."""

    template_fields = (*SQLCheckOperator.template_fields, "parameters")


def record_result(context, passed: bool) -> None:
    """Write the check's outcome to quality_results; a failure also becomes an alert row."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    ti = context["ti"]
    params = context["task"].parameters
    start, end = params["start"], params["end"]
    check = ti.task_id.removeprefix("check_")
    detail = None if passed else str(context.get("exception") or "check returned false")[:1000]
    hook = PostgresHook(postgres_conn_id="crypto_airflow")
    hook.run(
        (SQL / "quality_result.sql").read_text(),
        parameters={"check": check, "start": start, "end": end, "passed": passed, "detail": detail,
                    "run_id": context["run_id"]},
    )
    if not passed:
        hook.run(
            (SQL / "quality_alert.sql").read_text(),
            parameters={"id": f"quality:{check}:{start}", "rule": f"quality:{check}", "start": start},
        )


with DAG(
    dag_id="data_quality_check",
    description="Freshness, continuity, validity, uniqueness and consistency of candles and trades",
    doc_md=__doc__,
    schedule="@hourly",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["crypto", "quality"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    params={**window_params(), "symbols": symbols_param()},
    render_template_as_native_obj=True,  # parameters keep their types: timestamps, a list of symbols or None
    user_defined_filters={"symbol_list": symbol_list},
) as dag:

    @task
    def validate_params(start, end, symbols) -> None:
        check_window(start, end)
        symbol_list(symbols)

    validated = validate_params(START, END, "{{ params.symbols }}")
    for spec in CHECKS:
        validated >> IntervalCheckOperator(
            task_id=f"check_{spec['name']}",
            conn_id="crypto_reader",
            sql=spec["sql"],
            parameters={"start": START, "end": END, "symbols": SYMBOLS},
            on_success_callback=lambda ctx: record_result(ctx, True),
            on_failure_callback=lambda ctx: record_result(ctx, False),
            retries=0,  # a failed check is a finding, not a flake
        )
