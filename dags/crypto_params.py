"""The params the DAGs share, and the checks on them.

A run's conf overrides the DAG's params, so every param that reaches SQL or deletes data has a JSON schema:
Airflow refuses a conf that breaks it when the run is triggered (REST API, UI, CLI, `dag.test`) and again when
a task starts. What a schema cannot say (an end in the future, a start after the end) `check_window` says; the
DAGs call it before they touch data. Table names and other SQL identifiers never come from params.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException

# cryptopipe.schemas.SYMBOL, written again: docker-compose's Airflow has dags/ but not the project's packages
# (tests/test_dag_params.py checks the two agree).
SYMBOL = "[A-Z0-9]{2,20}"
# ISO-8601 with a zone: without one PostgreSQL would read it in its session's time zone.
TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$"
# How far past now an end may lie: clock skew, and a window ending at the minute under way.
FUTURE_TOLERANCE = timedelta(minutes=10)


class BadParams(AirflowFailException):
    """Params a run cannot work with: the task fails at once, since retrying would not change them."""


def timestamp(description: str) -> Param:
    return Param(None, type=["null", "string"], pattern=TIMESTAMP, description=description)


def window_params() -> dict:
    """`start` and `end`: an explicit window instead of the run's data interval."""
    return {"start": timestamp("Window start, ISO-8601 with zone (e.g. 2026-01-01T00:00:00Z); "
                               "empty: the run's data interval."),
            "end": timestamp("Window end (exclusive), ISO-8601 with zone, not in the future; "
                             "empty: the run's data interval.")}


def symbols_param() -> Param:
    return Param(None, type=["null", "array", "string"], items={"type": "string", "pattern": f"^{SYMBOL}$"},
                 pattern=rf"^\s*{SYMBOL}(\s*,\s*{SYMBOL})*\s*$",
                 description="Symbols, a list or comma-separated (BTCUSDT,ETHUSDT); empty: every symbol.")


def retention_days_param(default: int = 30) -> Param:
    return Param(default, type="integer", minimum=1, maximum=3650,
                 description="Raw trades older than this many days before the window's end are deleted (1-3650).")


def as_datetime(value, name: str) -> datetime:
    """A zone-aware datetime from what a template rendered: a datetime or an ISO-8601 string."""
    parsed = value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise BadParams(f"{name} {value!r:.60} is not an ISO-8601 timestamp") from None
    if not isinstance(parsed, datetime) or parsed.tzinfo is None:
        raise BadParams(f"{name} {value!r:.60} is not a timestamp with a time zone")
    return parsed


def check_window(start, end, now: datetime | None = None) -> None:
    """Raise BadParams unless end is not in the future (beyond FUTURE_TOLERANCE) and start (when given) is
    before end. Both are what the task will use: params, or else the data interval."""
    end = as_datetime(end, "end")
    now = now or datetime.now(timezone.utc)
    if end > now + FUTURE_TOLERANCE:
        raise BadParams(f"end {end.isoformat()} is in the future (now is {now:%Y-%m-%dT%H:%M:%SZ}); "
                         f"a window may end at most {FUTURE_TOLERANCE.total_seconds() / 60:.0f} minutes from now")
    if start is not None:
        start = as_datetime(start, "start")
        if start >= end:
            raise BadParams(f"start {start.isoformat()} is not before end {end.isoformat()}")


def symbol_list(symbols) -> list[str] | None:
    """None (every symbol) or the symbols as a list, from a list or a comma-separated string; BadParams names
    one that is not a symbol."""
    if symbols is None:
        return None
    if isinstance(symbols, str):  # typed into the trigger form as "BTCUSDT,ETHUSDT"
        symbols = [s.strip() for s in symbols.split(",") if s.strip()]
    if not isinstance(symbols, list):
        raise BadParams(f"symbols {symbols!r:.60} is not a list or a comma-separated string")
    for symbol in symbols:
        if not isinstance(symbol, str) or not re.fullmatch(SYMBOL, symbol):
            raise BadParams(f"symbol {symbol!r:.40} is not 2-20 upper-case letters and digits")
    return symbols or None
