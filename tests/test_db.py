"""The PostgreSQL schema on the real server: columns match the field lists, keys make upserts idempotent,
and each role can do exactly what it should."""

from __future__ import annotations

import psycopg2
import pytest

from cryptopipe import schemas

TABLES = {"trades": schemas.TRADE, "candles_1m": schemas.CANDLE, "stats_5m": schemas.STATS, "alerts": schemas.ALERT}
KEYS = {"trades": ["symbol", "agg_id"], "candles_1m": ["symbol", "window_start"],
        "stats_5m": ["symbol", "window_start"], "alerts": ["alert_id"]}
PG_TYPES = {"string": "text", "int64": "bigint", "boolean": "boolean", "decimal": "numeric",
            "timestamp": "timestamp with time zone"}


@pytest.fixture
def owner(settings):
    conn = psycopg2.connect(**settings.pg_params("owner"))
    yield conn.cursor()
    conn.close()


@pytest.mark.parametrize("table", sorted(TABLES))
def test_columns_types_and_keys_follow_the_schema(stack, owner, table):
    owner.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
                  "ORDER BY ordinal_position", (table,))
    assert owner.fetchall() == [(f.name, PG_TYPES[f.kind]) for f in TABLES[table]]
    owner.execute("""SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
                     AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary
                     ORDER BY array_position(i.indkey, a.attnum)""", (table,))
    assert [r[0] for r in owner.fetchall()] == KEYS[table]


def test_roles_are_least_privilege(stack, settings):
    writer = psycopg2.connect(**settings.pg_params("writer"))
    reader = psycopg2.connect(**settings.pg_params("reader"))
    try:
        for conn, statement in [
            (writer, "DELETE FROM trades"), (writer, "DROP TABLE trades"), (writer, "CREATE TABLE x (a int)"),
            (reader, "INSERT INTO alerts VALUES ('x','X','r',now(),1,1,1,now())"), (reader, "UPDATE trades SET qty = 0"),
        ]:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                with conn.cursor() as cur:
                    cur.execute(statement)
            conn.rollback()
        for conn in (writer, reader):
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM candles_1m")
            conn.rollback()
        with writer.cursor() as cur:  # an upsert, as the JDBC sink does it, inside a rolled-back transaction
            cur.execute("""INSERT INTO alerts VALUES ('t:r:0','T','r',now(),1,1,1,now())
                           ON CONFLICT (alert_id) DO UPDATE SET value = EXCLUDED.value""")
        writer.rollback()
    finally:
        writer.close()
        reader.close()
