"""PostgreSQL bootstrap: roles, the `crypto` database, tables and grants, all re-runnable.

`python -m ops.db init` runs it; the SQL lives in db/*.sql.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import psycopg2
from psycopg2 import sql

from cryptopipe.settings import ROOT, Settings, get_settings

SQL_DIR = ROOT / "db"
PG_SUPERUSER = "postgres"
TABLES = ("trades", "candles_1m", "stats_5m", "alerts")


def socket_dir(settings: Settings) -> Path:
    """The native cluster's unix socket folder: only its owner can connect through it."""
    return settings.var_dir / "run" / "pg"


def admin_connect(settings: Settings):
    """A superuser connection: PG_ADMIN_URL when set (docker-compose), else the native cluster's socket."""
    if settings.pg_admin_url is not None:
        conn = psycopg2.connect(settings.pg_admin_url.get_secret_value())
    else:
        conn = psycopg2.connect(
            host=str(socket_dir(settings)), port=settings.pg_port, user=PG_SUPERUSER, dbname="postgres"
        )
    conn.autocommit = True
    return conn


def read_sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


def init(settings: Settings | None = None) -> None:
    """Create roles, database, tables, the retention function and grants; set the role passwords from the settings."""
    settings = settings or get_settings()
    roles = Settings.PG_ROLES
    conn = admin_connect(settings)
    with conn.cursor() as cur:
        # Every run sets the passwords again: a cluster keeps up with .env (rotation, or the owner's old default).
        cur.execute(read_sql("roles.sql"), {f"{role}_password": settings.pg_params(role)["password"] for role in roles})
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.pg_database,))
        if cur.fetchone() is None:
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(settings.pg_database), sql.Identifier(roles["owner"])
                )
            )
        others = sql.SQL(", ").join(sql.Identifier(name) for role, name in roles.items() if role != "owner")
        cur.execute(
            sql.SQL("REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {others}").format(
                db=sql.Identifier(settings.pg_database), others=others
            )
        )
    conn.close()
    with psycopg2.connect(**settings.pg_params("owner")) as conn, conn.cursor() as cur:
        # One transaction: the retention function is never executable by PUBLIC before grants.sql revokes it.
        cur.execute(read_sql("schema.sql"))
        cur.execute(read_sql("retention.sql"))
        cur.execute(read_sql("grants.sql"))
    conn.close()


def newest_per_symbol(settings: Settings, limit: int = 20,
                      include: Iterable[str] = ()) -> list[tuple[str, float, float | None]]:
    """(symbol, newest trade, newest candle or None) in epoch seconds: every symbol of `include` that has trades,
    then the `limit` freshest others; read as the reporting role."""
    with psycopg2.connect(**settings.pg_params("reader")) as conn, conn.cursor() as cur:
        cur.execute(read_sql("freshness.sql"), {"limit": limit, "include": sorted(include)})
        rows = [(symbol, float(trade), float(candle) if candle is not None else None)
                for symbol, trade, candle in cur.fetchall()]
    conn.close()
    return rows


def table_counts(settings: Settings, tables: tuple[str, ...] = TABLES) -> dict[str, int]:
    """Row counts of the pipeline's tables, read as the reporting role."""
    counts: dict[str, int] = {}
    with psycopg2.connect(**settings.pg_params("reader")) as conn, conn.cursor() as cur:
        for table in tables:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            counts[table] = cur.fetchone()[0]
    conn.close()
    return counts


def main(argv: list[str]) -> int:
    if argv[1:] != ["init"]:
        print("usage: python -m ops.db init", file=sys.stderr)
        return 2
    init()
    print("  database ready: roles, tables and grants")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
