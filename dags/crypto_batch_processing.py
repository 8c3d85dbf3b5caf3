"""
### crypto_batch_processing

Hourly batch work on the loaded data, for the run's data interval (or `params.start` / `params.end`):

- rolls `candles_1m` up into `candles_1h` and `candles_1d` (every bucket touching the interval is recomputed
  whole, so a re-run changes nothing);
- applies the retention policy for raw trades: rows older than `params.trade_retention_days` (default 30)
  before the interval's end are deleted; candles keep the history.

A first task, `validate_params`, fails the run before anything is written when the window is impossible (an
end in the future, a start not before the end); the params' JSON schemas refuse the rest when the run is
triggered (`start`/`end` ISO-8601 with zone, `trade_retention_days` an integer 1..3650).

SQL lives in `sql/rollup_candles_1h.sql`, `sql/rollup_candles_1d.sql` (which fix the table and bucket and
include `sql/rollup_candles.sql`) and `sql/trades_retention.sql`. The rollups use the `crypto_airflow`
connection; retention uses `crypto_retention`, a role that may only call `delete_old_trades()`, which does the
deleting within its own limits and returns the count (in the task's log and XCom). Connections come from the
environment (`AIRFLOW_CONN_CRYPTO_AIRFLOW`, `AIRFLOW_CONN_CRYPTO_RETENTION`).
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import DAG, task

# crypto_params sits next to this file. Airflow's processes put this folder on sys.path; a bare DagBag
# (ops.dag_run, the tests) does not.
if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))
from crypto_params import check_window, retention_days_param, window_params  # noqa: E402

START = "{{ params.start or (data_interval_start if data_interval_start < data_interval_end else data_interval_end - macros.timedelta(hours=1)) }}"
END = "{{ params.end or data_interval_end }}"

with DAG(
    dag_id="crypto_batch_processing",
    description="Roll 1-minute candles into 1-hour and 1-day candles; apply the retention of raw trades",
    doc_md=__doc__,
    schedule="@hourly",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["crypto", "batch"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params={**window_params(), "trade_retention_days": retention_days_param()},
    render_template_as_native_obj=True,
) as dag:

    @task
    def validate_params(start, end) -> None:
        check_window(start, end)

    rollups = [
        SQLExecuteQueryOperator(
            task_id=f"rollup_{table}",
            conn_id="crypto_airflow",
            sql=f"sql/rollup_{table}.sql",
            parameters={"start": START, "end": END},
        )
        for table in ("candles_1h", "candles_1d")
    ]
    retention = SQLExecuteQueryOperator(
        task_id="trades_retention",
        conn_id="crypto_retention",
        sql="sql/trades_retention.sql",
        parameters={"end": END, "days": "{{ params.trade_retention_days }}"},
        show_return_value_in_logs=True,  # the number of trades deleted
    )
    validate_params(START, END) >> rollups >> retention
