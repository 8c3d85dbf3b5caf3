"""
### crypto_analysis

Hourly technical indicators per symbol on the 1-minute closes of `candles_1m`, into `indicators_1m`:

- `sma_20`: simple moving average of the last 20 closes;
- `ema_20`: exponential moving average, alpha = 2 / 21, seeded with the first SMA;
- `rsi_14`: Wilder's relative strength index over 14 changes;
- `volatility_60`: realised volatility, the standard deviation of the last 60 one-minute log returns, in %.

Minutes are the candles that exist (a minute without trades has no candle, so the series skips it). Each run
reads `WARMUP` minutes before its interval so the indicators are warm at the interval's start, and writes only
the interval's rows, idempotently. Reads with `crypto_reader`, writes with `crypto_airflow`; SQL in `sql/`.

Params for a manual run: `start` and `end` (ISO-8601 with zone) and `symbols` (a list or comma-separated).
Their JSON schemas refuse a bad conf when the run is triggered; the task checks the window (an end not in the
future, a start before the end) before it reads anything.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import DAG, task

# crypto_params sits next to this file. Airflow's processes put this folder on sys.path; a bare DagBag
# (ops.dag_run, the tests) does not.
if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))
from crypto_params import check_window, symbol_list, symbols_param, window_params  # noqa: E402

SQL = Path(__file__).parent / "sql"
WARMUP = 240  # minutes of history read before the interval


def indicators(closes: list[float]) -> list[tuple]:
    """(sma_20, ema_20, rsi_14, volatility_60) for each close; None while an indicator warms up."""
    import math

    out = []
    ema = None
    avg_gain = avg_loss = None
    for i, close in enumerate(closes):
        sma = sum(closes[i - 19: i + 1]) / 20 if i >= 19 else None
        if i == 19:
            ema = sma
        elif i > 19:
            ema = ema + 2 / 21 * (close - ema)
        rsi = None
        if i >= 1:
            change = close - closes[i - 1]
            gain, loss = max(change, 0.0), max(-change, 0.0)
            if i == 14:
                changes = [closes[k] - closes[k - 1] for k in range(1, 15)]
                avg_gain = sum(max(c, 0.0) for c in changes) / 14
                avg_loss = sum(max(-c, 0.0) for c in changes) / 14
            elif i > 14:
                avg_gain = (avg_gain * 13 + gain) / 14
                avg_loss = (avg_loss * 13 + loss) / 14
            if i >= 14:
                rsi = 100.0 if avg_loss == 0 else 100 - 100 / (1 + avg_gain / avg_loss)
        vol = None
        if i >= 60:
            returns = [math.log(closes[k] / closes[k - 1]) for k in range(i - 59, i + 1)]
            mean = sum(returns) / 60
            vol = math.sqrt(sum((r - mean) ** 2 for r in returns) / 59) * 100
        out.append((sma, ema if i >= 19 else None, rsi, vol))
    return out


with DAG(
    dag_id="crypto_analysis",
    description="SMA, EMA, RSI and realised volatility per symbol into indicators_1m",
    doc_md=__doc__,
    schedule="@hourly",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["crypto", "analysis"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params={**window_params(), "symbols": symbols_param()},
) as dag:

    @task
    def compute_indicators(params=None, data_interval_start=None, data_interval_end=None) -> int:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        end = params["end"] or data_interval_end
        start = params["start"] or (data_interval_start if data_interval_start < data_interval_end
                                    else data_interval_end - timedelta(hours=1))
        check_window(start, end)
        symbols = symbol_list(params["symbols"])
        rows = PostgresHook(postgres_conn_id="crypto_reader").get_records(
            (SQL / "closes_for_analysis.sql").read_text(),
            parameters={"start": start, "end": end, "warmup": WARMUP, "symbols": symbols})
        by_symbol: dict[str, list[tuple]] = {}
        for symbol, window_start, close in rows:
            by_symbol.setdefault(symbol, []).append((window_start, close))
        start_ts = datetime.fromisoformat(str(start)) if isinstance(start, str) else start
        out = []
        for symbol, series in by_symbol.items():
            values = indicators([float(c) for _, c in series])
            for (window_start, close), ind in zip(series, values):
                if window_start >= start_ts:
                    out.append((symbol, window_start, close, *ind))
        writer = PostgresHook(postgres_conn_id="crypto_airflow")
        conn = writer.get_conn()
        with conn, conn.cursor() as cur:
            cur.executemany((SQL / "upsert_indicators.sql").read_text(), out)
        conn.close()
        return len(out)

    compute_indicators()
