"""
### crypto_reports

Hourly and daily market reports per symbol, as HTML pages built from `candles_1m`, `stats_5m` and `alerts`:

- a price chart: each symbol's 1-minute closes as the change from its first close in the window, in %, one
  SVG line per symbol with one point per candle (no downsampling: a day is 1,440 points a symbol);
- a table, one row per symbol with candles in the window: open (the first minute's), high, low, close (the
  last minute's), change %, volume, quote volume, trades, VWAP (quote volume / volume), candles, alerts, and
  the largest 5-minute range % and volatility % of the `stats_5m` windows inside it (blank when none).

| report | covers | written |
|---|---|---|
| hourly | the hour before the run (its data interval) | every run |
| daily | the 24 hours before the run | when the run's interval ends at 00:00 UTC |

Params for a manual run: `start` and `end` (ISO-8601 with zone) report exactly that range, e.g. a replayed tape;
without them a manual run reports the hour before its logical date. `symbols` (a list or comma-separated)
narrows the report (default: every symbol with candles). `period` (`hourly` or `daily`) writes only that
report, over `start`/`end` or else the hour or the 24 hours ending at the run's interval end. Their JSON
schemas refuse a bad conf when the run is triggered; a report task checks its window (an end not in the
future, a start before the end) before it reads anything.

Each page goes to `$CRYPTO_REPORTS_DIR/<period>/crypto_report_<period>_<YYYYmmddTHHMM>.html` (the window's
start, UTC; without the variable, `reports/` at the repository root) and is recorded in `reports` with the id
`<period>:<YYYYmmddTHHMM>`, so a re-run replaces both. Reads with `crypto_reader`, records with `crypto_airflow`;
the SQL is in `sql/report_*.sql`, the page in `templates/crypto_report.html.j2`.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import DAG, Param, task

# crypto_params sits next to this file. Airflow's processes put this folder on sys.path; a bare DagBag
# (ops.dag_run, the tests) does not.
if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))
from crypto_params import check_window, symbol_list, symbols_param, window_params  # noqa: E402

SQL = Path(__file__).parent / "sql"
TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_REPORTS_DIR = Path(__file__).resolve().parent.parent / "reports"
LENGTH = {"hourly": timedelta(hours=1), "daily": timedelta(hours=24)}

# The window, rendered as native objects and passed on as query parameters. Explicit params win; otherwise the
# run's data interval. A run triggered without a logical date has none (and no data_interval_* in its context,
# hence dag_run's): it ends when the run was due. A zero-length interval (a manual run; @hourly's cron trigger
# timetable) leaves start None: the report then covers the period ending at `end`.
END = "{{ params.end or dag_run.data_interval_end or dag_run.run_after }}"
HOURLY_START = ("{{ params.start or (dag_run.data_interval_start if dag_run.data_interval_start"
                " and dag_run.data_interval_start < dag_run.data_interval_end else None) }}")
DAILY_START = "{{ params.start if params.period == 'daily' else None }}"
SYMBOLS = "{{ params.symbols }}"

# The table's columns: (field, heading). Each cell carries data-symbol, data-field and its exact data-value.
FIELDS = [
    ("open", "Open"), ("high", "High"), ("low", "Low"), ("close", "Close"), ("change_pct", "Change %"),
    ("volume", "Volume"), ("quote_volume", "Quote volume"), ("trades", "Trades"), ("vwap", "VWAP"),
    ("candles", "Candles"), ("alerts", "Alerts"), ("max_range_pct", "Max 5m range %"),
    ("max_volatility_pct", "Max 5m volatility %"),
]
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def as_utc(value) -> datetime:
    """A plain UTC datetime from what a template rendered: a (pendulum) datetime or an ISO-8601 string."""
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(value.astimezone(timezone.utc).isoformat())


def daily_due_at(period: str | None, end) -> bool:
    """Whether the daily report is written: asked for, or (unasked) the window ends at midnight UTC."""
    if period is not None:
        return period == "daily"
    end = as_utc(end)
    return (end.hour, end.minute, end.second, end.microsecond) == (0, 0, 0, 0)


def chart(closes: list[tuple], start: datetime, end: datetime, width: int = 960, height: int = 320,
          pad: int = 64) -> dict:
    """SVG coordinates of each symbol's closes, normalised to the change from its first close in %."""
    series: dict[str, list[tuple[float, float]]] = {}
    first: dict[str, object] = {}
    span = (end - start).total_seconds()
    for symbol, window_start, close in closes:
        base = first.setdefault(symbol, close)
        series.setdefault(symbol, []).append(((window_start - start).total_seconds() / span,
                                              float((close / base - 1) * 100)))
    values = [v for points in series.values() for _, v in points]
    lo, hi = min(values, default=0.0), max(values, default=0.0)
    if hi - lo < 1e-9:  # a flat market still needs a y scale
        lo, hi = lo - 1.0, hi + 1.0
    x = lambda f: pad + f * (width - 2 * pad)  # noqa: E731
    y = lambda v: pad + (hi - v) / (hi - lo) * (height - 2 * pad)  # noqa: E731
    lines = []
    for i, (symbol, points) in enumerate(series.items()):
        coords = [(round(x(f), 1), round(y(v), 1)) for f, v in points]
        # Past the palette, hues a golden angle apart stay distinguishable.
        color = PALETTE[i] if i < len(PALETTE) else f"hsl({i * 137.5 % 360:.0f}, 65%, 40%)"
        lines.append({"symbol": symbol, "color": color, "count": len(coords),
                      "points": " ".join(f"{a},{b}" for a, b in coords), "first": coords[0]})
    return {"width": width, "height": height, "pad": pad, "lines": lines, "hi": f"{hi:+.3f}", "lo": f"{lo:+.3f}",
            "zero_y": round(y(0.0), 1) if lo <= 0 <= hi else None,
            "start": f"{start:%Y-%m-%d %H:%M}", "end": f"{end:%Y-%m-%d %H:%M}"}


def cell(field: str, value) -> dict:
    """The exact value (data-value) and what a reader sees: percentages to 3 places, VWAP to 10, counts grouped."""
    from decimal import Decimal

    if value is None:
        return {"field": field, "value": "", "text": "–"}
    exact = format(value, "f") if isinstance(value, Decimal) else str(value)
    if field.endswith("_pct"):
        text = f"{value:.3f}"
    elif field == "vwap":
        text = format(value.quantize(Decimal("1e-10")).normalize(), "f")
    elif field in ("trades", "candles", "alerts"):
        text = f"{int(value):,}"
    else:
        text = format(value.normalize(), "f")
    return {"field": field, "value": exact, "text": text}


def write_report(period: str, window: dict, run_id: str | None) -> str:
    """Query, render, write the page (atomically) and record it; returns the page's path."""
    import os

    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from jinja2 import Environment, FileSystemLoader

    end = as_utc(window["end"])
    start = as_utc(window["start"]) if window.get("start") else end - LENGTH[period]
    check_window(start, end)
    parameters = {"start": start, "end": end, "symbols": symbol_list(window.get("symbols"))}

    reader = PostgresHook(postgres_conn_id="crypto_reader")
    names = [f for f, _ in FIELDS]
    rows = [dict(zip(["symbol", *names], r)) for r in
            reader.get_records((SQL / "report_summary.sql").read_text(), parameters=parameters)]
    closes = reader.get_records((SQL / "report_closes.sql").read_text(), parameters=parameters)

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    html = env.get_template("crypto_report.html.j2").render(
        period=period, start=f"{start:%Y-%m-%d %H:%M}", end=f"{end:%Y-%m-%d %H:%M}", run_id=run_id,
        generated=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}",
        fields=FIELDS, rows=[{"symbol": r["symbol"], "cells": [cell(f, r[f]) for f in names]} for r in rows],
        chart=chart(closes, start, end))

    folder = Path(os.environ.get("CRYPTO_REPORTS_DIR") or DEFAULT_REPORTS_DIR) / period
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crypto_report_{period}_{start:%Y%m%dT%H%M}.html"
    partial = path.with_name(path.name + ".partial")  # a reader never sees half a page
    partial.write_text(html, encoding="utf-8")
    partial.replace(path)

    PostgresHook(postgres_conn_id="crypto_airflow").run(
        (SQL / "report_record.sql").read_text(),
        parameters={"report_id": f"{period}:{start:%Y%m%dT%H%M}", "period": period, "start": start, "end": end,
                    "symbols": [r["symbol"] for r in rows], "path": str(path), "run_id": run_id})
    return str(path)


with DAG(
    dag_id="crypto_reports",
    description="Hourly and daily HTML market reports per symbol: price chart, OHLCV, VWAP, alerts, 5m stats",
    doc_md=__doc__,
    schedule="@hourly",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["crypto", "reports"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params={**window_params(), "symbols": symbols_param(),
            "period": Param(None, type=["null", "string"], enum=[None, "hourly", "daily"],
                            description="Write only this report; empty: hourly, and daily at midnight UTC.")},
    render_template_as_native_obj=True,  # the window stays datetimes, symbols a list or None
) as dag:

    @task.short_circuit
    def hourly_due(period: str | None) -> bool:
        return period in (None, "hourly")

    @task.short_circuit
    def daily_due(period: str | None, end) -> bool:
        return daily_due_at(period, end)

    @task
    def report(period: str, window: dict, run_id=None) -> str:
        return write_report(period, window, run_id)

    period = "{{ params.period }}"
    hourly_due(period) >> report.override(task_id="hourly_report")(
        "hourly", {"start": HOURLY_START, "end": END, "symbols": SYMBOLS})
    daily_due(period, END) >> report.override(task_id="daily_report")(
        "daily", {"start": DAILY_START, "end": END, "symbols": SYMBOLS})
