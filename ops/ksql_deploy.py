"""`make deploy-ksql`: apply ksql/*.sql, in order, through the ksqlDB REST API (ksql-python-ng).

The files are Jinja2 templates for the values that come from the settings (grace period, alert thresholds
per symbol); everything else is plain ksqlDB SQL. Re-running is harmless: CREATE ... IF NOT EXISTS, and an
INSERT INTO whose query already runs is skipped. With no ksqlDB reachable it says so and exits 0: natively
the stream function computes the same topics.
"""

from __future__ import annotations

import re
import sys
import types
from decimal import Decimal

import httpx
import ksql.api
from jinja2 import Environment, StrictUndefined
from ksql import KSQLAPI
from ksql.errors import KSQLError

from cryptopipe.settings import ROOT, Settings, load_settings, parse_thresholds

KSQL_DIR = ROOT / "ksql"
CREATE = re.compile(r"^CREATE\s+(?:OR\s+REPLACE\s+)?(STREAM|TABLE)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)


def threshold_case(default: float, overrides: str) -> str:
    """A CASE expression giving each symbol its threshold, with the default for the rest."""
    by_symbol = parse_thresholds(overrides)  # refuses anything but SYMBOL:number, so nothing else reaches SQL
    default_text = f"{Decimal(str(default)):f}"
    if not by_symbol:
        return default_text
    whens = " ".join(f"WHEN `symbol` = '{s}' THEN {v:f}" for s, v in sorted(by_symbol.items()))
    return f"(CASE {whens} ELSE {default_text} END)"


def render(settings: Settings) -> list[tuple[str, str]]:
    """(file name, statement) for every statement of every file, in order."""
    env = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    values = {
        "grace_s": int(settings.stream_grace_s),
        "move_case": threshold_case(settings.alert_move_pct, settings.alert_move_pct_symbols),
        "volume_case": threshold_case(settings.alert_quote_volume, settings.alert_quote_volume_symbols),
    }
    out = []
    for path in sorted(KSQL_DIR.glob("*.sql")):
        text = env.from_string(path.read_text()).render(values)
        out += [(path.name, stmt) for stmt in split_statements(text)]
    return out


def split_statements(text: str) -> list[str]:
    """Statements separated by ';', ignoring '--' comments and semicolons inside quotes."""
    statements, current, quote = [], [], None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is None and text.startswith("--", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
            continue
        if ch in ("'", "`") and quote in (None, ch):
            quote = None if quote else ch
        if ch == ";" and quote is None:
            statement = "".join(current).strip()
            if statement:
                statements.append(statement + ";")
            current = []
        else:
            current.append(ch)
        i += 1
    if "".join(current).strip():
        raise ValueError(f"statement without a closing ';': {''.join(current).strip()[:80]}")
    return statements


def normalize(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip().rstrip(";").strip().upper()


def ksql_client(url: str):
    """KSQLAPI from ksql-python-ng. Its 0.29 release passes `cert=` to httpx, which httpx 0.28 (required
    by quixstreams) no longer takes; the module's own httpx reference gets calls without it."""
    def drop_cert(func):
        return lambda *args, cert=None, **kwargs: func(*args, **kwargs)

    ksql.api.httpx = types.SimpleNamespace(**{**vars(httpx), "request": drop_cert(httpx.request),
                                              "get": drop_cert(httpx.get)})
    return KSQLAPI(url, timeout=15)


def deploy(settings: Settings, out=print) -> int:
    statements = render(settings)
    try:
        client = ksql_client(settings.ksqldb_url)
    except Exception as err:  # the constructor calls /info: any failure means no usable server
        out(f"no ksqlDB reachable at {settings.ksqldb_url} ({type(err).__name__}); nothing to deploy. "
            "Natively the stream function (make stream) computes the same topics; with docker-compose, "
            "run this after `make compose-up`.")
        return 0
    try:
        existing = {row["name"].upper() for kind in ("STREAMS", "TABLES")
                    for row in client.ksql(f"SHOW {kind};")[0][kind.lower()]}
        running = {normalize(q["queryString"]) for q in client.ksql("SHOW QUERIES;")[0]["queries"]}
        for name, statement in statements:
            created = CREATE.match(statement)
            if created and created.group(2).upper() in existing:
                out(f"  {name}: {created.group(1).lower()} {created.group(2)} already there")
                continue
            if statement.upper().startswith("INSERT INTO") and normalize(statement) in running:
                out(f"  {name}: INSERT INTO query already running")
                continue
            client.ksql(statement)
            out(f"  {name}: {created.group(1).lower() + ' ' + created.group(2) if created else 'INSERT INTO query'} created")
    except KSQLError as err:
        out(f"error: ksqlDB refused {name}: {err.msg}")
        return 1
    return 0


def main() -> int:
    return deploy(load_settings())


if __name__ == "__main__":
    sys.exit(main())
