"""
### crypto_batch_processing

Hourly batch work on the loaded data, for the run's data interval (or `params.start` / `params.end`):

- rolls `candles_1m` up into `candles_1h` and `candles_1d` (every bucket touching the interval is recomputed
  whole, so a re-run changes nothing);
- applies the retention policy for raw trades: rows older than `params.trade_retention_days` (default 30)
  before the interval's end are deleted; candles keep the history.

SQL lives in `sql/rollup_candles.sql` and `sql/trades_retention.sql`. The rollups use the `crypto_writer`
connection; retention deletes rows, which the writer may not, so it uses `crypto_owner`. Connections come from
the environment (`AIRFLOW_CONN_CRYPTO_WRITER`, `AIRFLOW_CONN_CRYPTO_OWNER`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import DAG

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
    params={"start": None, "end": None, "trade_retention_days": 30},
    render_template_as_native_obj=True,
) as dag:
    rollups = [
        SQLExecuteQueryOperator(
            task_id=f"rollup_{table}",
            conn_id="crypto_writer",
            sql="sql/rollup_candles.sql",
            params={"table": table, "unit": unit},
            parameters={"start": START, "end": END},
        )
        for table, unit in (("candles_1h", "hour"), ("candles_1d", "day"))
    ]
    retention = SQLExecuteQueryOperator(
        task_id="trades_retention",
        conn_id="crypto_owner",
        sql="sql/trades_retention.sql",
        parameters={"end": END, "days": "{{ params.trade_retention_days }}"},
    )
    rollups >> retention
