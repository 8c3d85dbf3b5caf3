"""The crypto_reports DAG run with dag.test() against the real PostgreSQL holding the pipeline's data (loaded by
`make demo`): every number in the page equals what the test computes itself from the rows of candles_1m,
stats_5m and alerts, the chart has one line per symbol with one point per candle, and the daily report is
written exactly when the window ends at midnight UTC."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ops.dag_run import run_dag

from .helpers import TAPE_SYMBOLS as SYMBOLS

SVG = "{http://www.w3.org/2000/svg}"
# Computed by a division: equal up to the last digits of numeric's and Decimal's rounding.
DIVIDED = {"change_pct", "vwap"}


class ReportPage(HTMLParser):
    """The table cells' exact values by (symbol, field) and the chart's points by symbol."""

    def __init__(self, html: str):
        super().__init__()
        self.cells: dict[tuple[str, str], str] = {}
        self.lines: dict[str, list[str]] = {}
        self.declared_points: dict[str, int] = {}
        self.feed(html)
        svg = re.search(r"<svg\b.*?</svg>", html, re.S)
        assert svg, "no SVG chart in the page"
        self.svg = ET.fromstring(svg.group(0))  # well-formed XML, or a browser would not draw it

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "data-field" in a:
            self.cells[(a["data-symbol"], a["data-field"])] = a["data-value"]
        elif tag == "polyline":
            self.lines[a["data-symbol"]] = a["points"].split()
            self.declared_points[a["data-symbol"]] = int(a["data-points"])


def expected(cur, start: datetime, end: datetime, symbols: list[str] | None) -> tuple[dict, dict]:
    """The report's table and each symbol's number of candles, computed here from the raw rows."""
    cur.execute("SELECT symbol, window_start, open, high, low, close, volume, quote_volume, trade_count "
                "FROM candles_1m WHERE window_start >= %s AND window_start < %s ORDER BY symbol, window_start",
                (start, end))
    by_symbol: dict[str, list[tuple]] = {}
    for row in cur.fetchall():
        if symbols is None or row[0] in symbols:
            by_symbol.setdefault(row[0], []).append(row)
    cur.execute("SELECT symbol, window_start FROM alerts")
    alerts = [sym for sym, ws in cur.fetchall() if start <= ws < end]
    cur.execute("SELECT symbol, window_start, window_end, range_pct, volatility_pct FROM stats_5m")
    stats: dict[str, list[tuple]] = {}
    for sym, ws, we, rng, vol in cur.fetchall():
        if start <= ws and we <= end:
            stats.setdefault(sym, []).append((rng, vol))
    table = {}
    for sym, rows in by_symbol.items():
        o, c = rows[0][2], rows[-1][5]
        volume, quote = sum(r[6] for r in rows), sum(r[7] for r in rows)
        values = {
            "open": o, "high": max(r[3] for r in rows), "low": min(r[4] for r in rows), "close": c,
            "change_pct": (c - o) / o * 100, "volume": volume, "quote_volume": quote,
            "trades": sum(r[8] for r in rows), "vwap": quote / volume if volume else None, "candles": len(rows),
            "alerts": alerts.count(sym),
            "max_range_pct": max((s[0] for s in stats.get(sym, [])), default=None),
            "max_volatility_pct": max((s[1] for s in stats.get(sym, [])), default=None),
        }
        table.update({(sym, field): value for field, value in values.items()})
    return table, {sym: len(rows) for sym, rows in by_symbol.items()}


def assert_page_matches(page: ReportPage, table: dict, candles: dict) -> None:
    assert set(page.cells) == set(table)
    for key, want in table.items():
        got = page.cells[key]
        if want is None:
            assert got == "", key
        elif key[1] in DIVIDED:
            assert math.isclose(Decimal(got), want, rel_tol=Decimal("1e-12"), abs_tol=Decimal("1e-15")), (key, got, want)
        else:
            assert Decimal(got) == want, (key, got, want)
    # One line per symbol, one point per candle (no downsampling).
    assert {s: len(p) for s, p in page.lines.items()} == candles == page.declared_points
    assert len(page.svg.findall(f"{SVG}polyline")) == len(candles)


@pytest.fixture
def db(owner_cur, tmp_path):
    yield owner_cur
    # Only this test's rows: their pages were in its temporary folder.
    owner_cur.execute("DELETE FROM reports WHERE path LIKE %s", (f"{tmp_path}/%",))


def stamp(ts: datetime) -> str:
    return f"{ts.astimezone(timezone.utc):%Y%m%dT%H%M}"


def assert_recorded(cur, folder: Path, period: str, start: datetime, end: datetime, symbols: list[str]) -> ReportPage:
    path = folder / period / f"crypto_report_{period}_{stamp(start)}.html"
    assert path.is_file(), sorted(str(p) for p in folder.rglob("*"))
    cur.execute("SELECT period, window_start, window_end, symbols, path, run_id FROM reports WHERE report_id = %s",
                (f"{period}:{stamp(start)}",))
    row = cur.fetchone()
    assert row is not None, (period, start)
    assert (row[0], row[1], row[2], sorted(row[3]), row[4]) == (period, start, end, sorted(symbols), str(path))
    assert row[5], "the run is recorded"
    return ReportPage(path.read_text(encoding="utf-8"))


def test_report_over_the_pipeline_data_equals_a_computation_from_the_candles(
        airflow_env, pipeline_data, db, tmp_path):
    db.execute("SELECT min(window_start), max(window_start) FROM candles_1m WHERE symbol = ANY(%s)", (SYMBOLS,))
    first, last = db.fetchone()
    end = last + timedelta(minutes=1)
    if (end.hour, end.minute) == (0, 0):  # this test's window must not end at midnight: no daily report
        end += timedelta(minutes=1)
    conf = {"start": first.isoformat(), "end": end.isoformat(), "symbols": SYMBOLS}
    states = run_dag({**airflow_env, "CRYPTO_REPORTS_DIR": str(tmp_path)}, "crypto_reports", conf)
    assert states == {"hourly_due": "success", "hourly_report": "success",
                      "daily_due": "success", "daily_report": "skipped"}
    assert not (tmp_path / "daily").exists()

    table, candles = expected(db, first, end, SYMBOLS)
    assert set(candles) == set(SYMBOLS)
    assert sum(table[(s, "trades")] for s in SYMBOLS) == 1227 + 506 + 177 + 12_477  # every tape trade
    page = assert_recorded(db, tmp_path, "hourly", first, end, SYMBOLS)
    assert_page_matches(page, table, candles)
    assert table[("XRPETH", "alerts")] > 0 and table[("XRPETH", "max_range_pct")] is not None


def test_a_run_at_midnight_writes_the_hourly_and_the_daily_report(airflow_env, pipeline_data, db, tmp_path):
    db.execute("SELECT min(window_start), max(window_start) FROM candles_1m WHERE symbol = 'XRPETH'")
    first, last = db.fetchone()
    midnight = last.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    assert first < midnight, "the XRPETH tape (60 h) spans a midnight"

    # No params: what the scheduler's run at 00:00 does.
    states = run_dag({**airflow_env, "CRYPTO_REPORTS_DIR": str(tmp_path)}, "crypto_reports", {}, midnight)
    assert states == {"hourly_due": "success", "hourly_report": "success",
                      "daily_due": "success", "daily_report": "success"}
    for period, length in (("hourly", timedelta(hours=1)), ("daily", timedelta(hours=24))):
        start = midnight - length
        table, candles = expected(db, start, midnight, None)
        page = assert_recorded(db, tmp_path, period, start, midnight, list(candles))
        assert_page_matches(page, table, candles)
    assert "XRPETH" in candles  # the daily window holds pipeline data


def test_period_param_writes_only_that_report_over_the_given_range(airflow_env, pipeline_data, db, tmp_path):
    db.execute("SELECT min(window_start), max(window_start) FROM candles_1m WHERE symbol = 'XRPETH'")
    first, last = db.fetchone()
    start, end = first + timedelta(hours=5), first + timedelta(hours=29)
    conf = {"start": start.isoformat(), "end": end.isoformat(), "symbols": ["XRPETH"], "period": "daily"}
    states = run_dag({**airflow_env, "CRYPTO_REPORTS_DIR": str(tmp_path)}, "crypto_reports", conf)
    assert states == {"hourly_due": "success", "hourly_report": "skipped",
                      "daily_due": "success", "daily_report": "success"}
    table, candles = expected(db, start, end, ["XRPETH"])
    assert_page_matches(assert_recorded(db, tmp_path, "daily", start, end, ["XRPETH"]), table, candles)
    assert not (tmp_path / "hourly").exists()
