"""ksql/ without a server: every file splits into statements, and the columns each statement reads or
writes are exactly the field lists in cryptopipe/schemas.py (which the stream function and sinks use)."""

from __future__ import annotations

import re

import pytest

from cryptopipe import schemas
from ops.ksql_deploy import KSQL_DIR, deploy, render, split_statements, threshold_case
from cryptopipe.settings import Settings
from tests.helpers import SECRETS

SETTINGS = Settings(_env_file=None, **SECRETS, alert_move_pct_symbols="BTCUSDT:0.5,XRPETH:2")


def top_level_split(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    return parts + ["".join(current)]


def projection(statement: str) -> list[str]:
    """The output column names of a SELECT, without the key column (`..._key`)."""
    select = re.search(r"\bSELECT\b(.*?)\bFROM\b", statement, re.S | re.I).group(1)
    names = [re.search(r"AS\s+`(\w+)`\s*$", item.strip(), re.I).group(1) for item in top_level_split(select)]
    return [n for n in names if not n.endswith("_key")]


def declared_columns(statement: str) -> list[str]:
    body = statement[statement.index("(") + 1: statement.index(") WITH")]
    return [re.match(r"\s*`(\w+)`", col).group(1) for col in top_level_split(body)]


def target_topic(statement: str, streams: dict[str, str]) -> str:
    into = re.match(r"INSERT\s+INTO\s+(\w+)", statement, re.I)
    if into:
        return streams[into.group(1).lower()]
    return re.search(r"KAFKA_TOPIC\s*=\s*'([^']+)'", statement).group(1)


def test_every_file_opens_with_a_comment_and_splits_into_statements():
    files = sorted(KSQL_DIR.glob("*.sql"))
    assert [f.name[:3] for f in files] == ["01_", "02_", "03_", "04_", "05_"]
    for path in files:
        assert path.read_text().startswith("-- "), path.name
    statements = render(SETTINGS)
    assert len(statements) == 7
    for _, stmt in statements:
        assert re.match(r"(CREATE (STREAM|TABLE) IF NOT EXISTS|INSERT INTO) ", stmt), stmt[:50]
        assert stmt.endswith(";") and stmt.count(";") == 1
        assert "{{" not in stmt and "}}" not in stmt


def test_selects_produce_exactly_the_schema_fields():
    streams = {}
    checked = set()
    for _, stmt in render(SETTINGS):
        created = re.match(r"CREATE (?:STREAM|TABLE) IF NOT EXISTS (\w+)", stmt)
        if created and "KAFKA_TOPIC" in stmt:
            streams[created.group(1).lower()] = re.search(r"KAFKA_TOPIC\s*=\s*'([^']+)'", stmt).group(1)
        if re.search(r"\bSELECT\b", stmt):
            topic = target_topic(stmt, streams)
            assert projection(stmt) == schemas.names(schemas.BY_TOPIC[topic]), topic
            checked.add(topic)
        elif created:
            topic = streams[created.group(1).lower()]
            assert [c for c in declared_columns(stmt) if not c.endswith("_key")] == \
                schemas.names(schemas.BY_TOPIC[topic]), topic
    assert checked == {"crypto.candles-1m", "crypto.stats-5m", "crypto.alerts", "crypto.trades"}


def test_windows_have_an_explicit_grace_period():
    for _, stmt in render(SETTINGS):
        if "WINDOW " in stmt:
            assert re.search(r"GRACE PERIOD \d+ SECONDS", stmt), stmt[:60]


def test_thresholds_per_symbol_with_a_default():
    assert threshold_case(1.0, "") == "1.0"
    case = threshold_case(1.0, "BTCUSDT:0.5,XRPETH:2")
    assert case == "(CASE WHEN `symbol` = 'BTCUSDT' THEN 0.5 WHEN `symbol` = 'XRPETH' THEN 2 ELSE 1.0 END)"
    with pytest.raises(ValueError):
        threshold_case(1.0, "BTC'; DROP STREAM x;--:1")


def test_splitting_respects_quotes_and_comments():
    text = "-- a; comment\nSELECT ';' AS `x;y` FROM t; -- tail;\nINSERT INTO s SELECT 1 FROM t;"
    assert split_statements(text) == ["SELECT ';' AS `x;y` FROM t;", "INSERT INTO s SELECT 1 FROM t;"]
    with pytest.raises(ValueError, match="closing"):
        split_statements("SELECT 1 FROM t")


def test_deploy_without_a_server_says_so_and_succeeds(unique):
    from .helpers import free_port

    lines = []
    settings = SETTINGS.model_copy(update={"ksqldb_port": free_port()})
    assert deploy(settings, out=lines.append) == 0
    assert len(lines) == 1 and lines[0].startswith("no ksqlDB reachable at http://127.0.0.1:")
