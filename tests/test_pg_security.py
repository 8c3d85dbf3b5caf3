"""PostgreSQL's authentication and least privilege on the real server: each role can do its job and nothing
more, the old default owner password is refused, `make psql` logs in as a role, and a root checkout closed to
other users (cloned under /root) still runs its cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest

from cryptopipe.settings import ROOT
from ops import db
from ops.postgres import Postgres

from .helpers import SECRETS, free_port, wait_for

DENIED = psycopg2.errors.InsufficientPrivilege


@pytest.fixture(scope="module")
def postgres(settings):
    """Only PostgreSQL is needed: these tests also run against a cluster of their own (PG_PORT, VAR_DIR)."""
    if not Postgres(settings).is_up():
        pytest.fail(f"PostgreSQL does not answer on port {settings.pg_port}: run `make up`, or `make test`")


def connect(settings, role: str):
    return psycopg2.connect(**settings.pg_params(role))


def denied(conn, statement: str, params=None) -> None:
    """The statement is refused for lack of a privilege (and the transaction rolled back)."""
    with pytest.raises(DENIED):
        with conn.cursor() as cur:
            cur.execute(statement, params)
    conn.rollback()


def allowed(conn, statement: str, params=None) -> None:
    """The statement runs; rolled back, so nothing stays."""
    with conn.cursor() as cur:
        cur.execute(statement, params)
    conn.rollback()


TRADE = "INSERT INTO trades VALUES (%s, %s, 1, 1, 1, 1, %s, false)"


@pytest.fixture
def planted(settings, unique):
    """Trades of a symbol of the test's own, inserted by the owner and deleted again at the end."""
    symbol = f"TEST{unique.upper()}"
    owner = connect(settings, "owner")
    owner.autocommit = True

    def plant(*times: str) -> None:
        with owner.cursor() as cur:
            for agg_id, when in enumerate(times):
                cur.execute(TRADE, (symbol, agg_id, when))

    def left() -> list[str]:
        with owner.cursor() as cur:
            cur.execute("SELECT to_char(trade_time AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM trades "
                        "WHERE symbol = %s ORDER BY trade_time", (symbol,))
            return [r[0] for r in cur.fetchall()]

    plant.left, plant.symbol = left, symbol
    yield plant
    with owner.cursor() as cur:
        cur.execute("DELETE FROM trades WHERE symbol = %s", (symbol,))
    owner.close()


def test_the_owner_needs_its_password_from_env_and_an_old_cluster_gets_it_at_the_next_start(postgres, settings):
    assert settings.pg_owner_password.get_secret_value() != "crypto"
    # A cluster from before: the owner's password was the old default and the writer also wrote the DAGs' tables.
    owner = connect(settings, "owner")
    with owner, owner.cursor() as cur:
        cur.execute("GRANT SELECT, INSERT, UPDATE ON quality_results, reports TO crypto_writer")
    owner.close()
    admin = db.admin_connect(settings)
    with admin.cursor() as cur:
        cur.execute("ALTER ROLE crypto PASSWORD 'crypto'")
    admin.close()
    psycopg2.connect(**settings.pg_params("owner") | {"password": "crypto"}).close()

    db.init(settings)  # what `make up` runs

    old = settings.pg_params("owner") | {"password": "crypto"}
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(**old)
    writer = connect(settings, "writer")
    try:
        denied(writer, "SELECT count(*) FROM quality_results")
        denied(writer, "SELECT count(*) FROM reports")
    finally:
        writer.close()
    with connect(settings, "owner") as owner, owner.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("crypto",)
    owner.close()


def test_no_role_but_the_owner_can_create_roles_databases_or_tables(postgres, settings):
    for role in ("writer", "airflow", "retention", "reader"):
        conn = connect(settings, role)
        try:
            denied(conn, "CREATE TABLE x (a int)")
            denied(conn, "DROP TABLE trades")
            denied(conn, "ALTER TABLE trades ADD COLUMN x int")
            denied(conn, "CREATE ROLE x")
        finally:
            conn.close()


def test_the_writer_only_upserts_the_sink_tables(postgres, settings):
    writer = connect(settings, "writer")
    try:
        allowed(writer, TRADE + " ON CONFLICT (symbol, agg_id) DO UPDATE SET qty = EXCLUDED.qty",
                ("TESTW", 1, "2020-01-01"))
        for table in ("candles_1m", "stats_5m", "alerts"):
            allowed(writer, f"SELECT count(*) FROM {table}")
        denied(writer, "DELETE FROM trades")
        denied(writer, "TRUNCATE trades")
        for table in ("quality_results", "candles_1h", "candles_1d", "indicators_1m", "reports"):
            denied(writer, f"SELECT count(*) FROM {table}")
        denied(writer, "INSERT INTO quality_results (check_name, window_start, window_end, passed) "
                       "VALUES ('x', now(), now(), true)")
        denied(writer, "SELECT delete_old_trades(now(), 1)")
    finally:
        writer.close()


def test_airflow_writes_the_dags_results_and_never_the_pipelines_tables(postgres, settings):
    airflow = connect(settings, "airflow")
    try:
        denied(airflow, TRADE, ("TESTA", 1, "2020-01-01"))
        denied(airflow, "DELETE FROM trades")
        denied(airflow, "UPDATE candles_1m SET close = 0")
        denied(airflow, "INSERT INTO stats_5m SELECT * FROM stats_5m")
        denied(airflow, "SELECT delete_old_trades(now(), 1)")
        # What the DAGs do (dags/*.py, dags/sql/*.sql): their upserts and the rollup's INSERT ... SELECT.
        allowed(airflow, """INSERT INTO quality_results (check_name, window_start, window_end, passed)
                            VALUES ('test', now(), now(), true) ON CONFLICT (check_name, window_start, window_end)
                            DO UPDATE SET passed = EXCLUDED.passed, checked_at = now()""")
        allowed(airflow, """INSERT INTO alerts VALUES ('quality:test:x', '*', 'quality:test', now(), 0, 0, NULL, now())
                            ON CONFLICT (alert_id) DO UPDATE SET detected_at = EXCLUDED.detected_at""")
        allowed(airflow, """INSERT INTO candles_1h AS r SELECT * FROM candles_1m LIMIT 1
                            ON CONFLICT (symbol, window_start) DO UPDATE SET close = EXCLUDED.close""")
        allowed(airflow, """INSERT INTO indicators_1m (symbol, window_start, close) VALUES ('T', now(), 1)
                            ON CONFLICT (symbol, window_start) DO UPDATE SET close = EXCLUDED.close""")
        allowed(airflow, """INSERT INTO reports (report_id, period, window_start, window_end, symbols, path)
                            VALUES ('hourly:test', 'hourly', now(), now(), '{T}', '/x') ON CONFLICT (report_id)
                            DO UPDATE SET path = EXCLUDED.path""")
        for table in ("trades", "candles_1m", "stats_5m"):
            allowed(airflow, f"SELECT * FROM {table} LIMIT 1")
        denied(airflow, "DELETE FROM quality_results")
    finally:
        airflow.close()


def test_retention_deletes_only_through_its_function_and_only_old_trades(postgres, settings, planted):
    retention = connect(settings, "retention")
    try:
        denied(retention, "DELETE FROM trades")
        denied(retention, "SELECT count(*) FROM trades")
        # Far before any real trade, so only the test's own rows can be old enough.
        planted("1990-01-01", "1990-02-20", "1990-03-01")
        with retention, retention.cursor() as cur:
            cur.execute("SELECT delete_old_trades(%s, %s)", ("1990-03-02T00:00:00Z", 30))
            assert cur.fetchone() == (1,)
        assert planted.left() == ["1990-02-20", "1990-03-01"]
    finally:
        retention.close()


@pytest.mark.parametrize("end, days, error", [
    ("2020-01-01", 0, "keep_days must be between 1 and 3650, got 0"),
    ("2020-01-01", -5, "keep_days must be between 1 and 3650, got -5"),
    ("2020-01-01", 3651, "keep_days must be between 1 and 3650, got 3651"),
    ("2020-01-01", None, "keep_days must be between 1 and 3650"),
    (None, 7, "cutoff_end must not be NULL"),
])
def test_retention_refuses_a_senseless_period(postgres, settings, end, days, error):
    retention = connect(settings, "retention")
    try:
        with pytest.raises((psycopg2.errors.InvalidParameterValue, psycopg2.errors.NullValueNotAllowed), match=error):
            with retention.cursor() as cur:
                cur.execute("SELECT delete_old_trades(%s, %s)", (end, days))
    finally:
        retention.close()


def test_a_far_future_cutoff_deletes_nothing_recent(postgres, settings, planted):
    planted("1990-01-01")
    with connect(settings, "owner") as owner, owner.cursor() as cur:
        cur.execute(TRADE, (planted.symbol, 99, "now"))
        cur.execute("SELECT count(*) FROM trades WHERE trade_time < now() - interval '3650 days'")
        ancient = cur.fetchone()[0]
    owner.close()
    retention = connect(settings, "retention")
    try:
        # Counted, then rolled back: were the end not clamped to now, this would delete every trade there is.
        with retention.cursor() as cur:
            cur.execute("SELECT delete_old_trades('infinity', 3650)")
            assert cur.fetchone() == (ancient,)
        retention.rollback()
    finally:
        retention.close()


def test_the_retention_function_runs_as_its_owner_with_a_fixed_search_path(postgres, settings):
    with connect(settings, "reader") as reader, reader.cursor() as cur:
        cur.execute("""SELECT pg_get_userbyid(proowner), prosecdef, proconfig,
                              has_function_privilege('crypto_retention', p.oid, 'EXECUTE'),
                              has_function_privilege('crypto_reader', p.oid, 'EXECUTE')
                       FROM pg_proc p WHERE proname = 'delete_old_trades'""")
        assert cur.fetchall() == [("crypto", True, ["search_path=pg_catalog, public, pg_temp"], True, False)]
    reader.close()


def test_backfill_only_inserts_trades_and_never_overwrites_one(postgres, settings, planted):
    """kafka_reconciliation's role: a trade the table lacks goes in, one it has stays as it is."""
    planted("2020-01-01")  # agg_id 0
    backfill = connect(settings, "backfill")
    try:
        # Without a conflict target: naming (symbol, agg_id) would need SELECT on those columns.
        insert = TRADE + " ON CONFLICT DO NOTHING"
        with backfill.cursor() as cur:
            cur.execute(insert, (planted.symbol, 0, "2021-06-01"))  # already there: left as it is
            cur.execute(insert, (planted.symbol, 1, "2022-06-01"))  # missing: added
        backfill.commit()
        assert planted.left() == ["2020-01-01", "2022-06-01"]
        denied(backfill, "SELECT count(*) FROM trades")
        denied(backfill, TRADE + " ON CONFLICT (symbol, agg_id) DO NOTHING", ("TESTB", 2, "2020-01-01"))
        denied(backfill, "UPDATE trades SET qty = 0")
        denied(backfill, "DELETE FROM trades")
        denied(backfill, TRADE + " ON CONFLICT (symbol, agg_id) DO UPDATE SET qty = EXCLUDED.qty",
               ("TESTB", 1, "2020-01-01"))
        for table in ("candles_1m", "alerts", "quality_results"):
            denied(backfill, f"SELECT count(*) FROM {table}")
        denied(backfill, "SELECT delete_old_trades(now(), 1)")
    finally:
        backfill.close()


def test_the_reader_only_reads(postgres, settings):
    reader = connect(settings, "reader")
    try:
        for table in ("trades", "candles_1m", "quality_results", "reports"):
            allowed(reader, f"SELECT count(*) FROM {table}")
        denied(reader, "INSERT INTO alerts VALUES ('x', 'X', 'r', now(), 1, 1, 1, now())")
        denied(reader, "UPDATE trades SET qty = 0")
        denied(reader, "DELETE FROM reports")
        denied(reader, "SELECT delete_old_trades(now(), 1)")
    finally:
        reader.close()


def test_make_psql_runs_a_query_as_the_reader(postgres):
    result = subprocess.run(["make", "-s", "psql"], cwd=ROOT, input="SELECT 'as ' || current_user;\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "as crypto_reader" in result.stdout
    result = subprocess.run(["make", "-s", "psql", "ROLE=airflow"], cwd=ROOT, input="DELETE FROM trades;\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "permission denied for table trades" in result.stderr


def test_psql_names_the_roles_for_an_unknown_one_and_the_fix_when_psql_is_missing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ops.psql", "root"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown role 'root': ROLE must be one of owner, writer, airflow, retention, backfill, reader, monitor"]
    env = {**os.environ, "PG_BINDIR": str(tmp_path), "PATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "ops.psql"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "psql not found: run `make setup`" in result.stderr


def test_a_checkout_closed_to_other_users_runs_its_cluster(tmp_path):
    """`make up` as root in a clone under /root (mode 0700): the server runs as the postgres system user, which
    cannot enter the checkout. Not as root the server runs as the checkout's owner, and this checks it starts too."""
    closed = Path(tempfile.mkdtemp(prefix="closed-"))  # mode 0700
    clone = closed / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # The code as it is now: uncommitted and new files over the clone.
    changed = subprocess.run(["git", "ls-files", "-mo", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, changed):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    env = {k: v for k, v in os.environ.items() if k not in ("VAR_DIR", "LOGS_DIR", "PG_HOST")}
    env |= {k.upper(): v for k, v in SECRETS.items()} | {"PG_PORT": str(free_port())}

    def clone_python(code: str) -> str:
        # The clone's own modules: with cwd=clone they come before anything installed.
        prelude = ("from cryptopipe.settings import get_settings, ROOT; from ops.postgres import Postgres; "
                   f"assert str(ROOT) == {str(clone.resolve())!r}, ROOT; pg = Postgres(get_settings()); ")
        result = subprocess.run([sys.executable, "-c", prelude + code], cwd=clone, env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    data = clone / "var" / "postgres"
    try:
        clone_python("pg.preflight(); pg.start()")
        assert clone_python("print(pg.is_up())").strip() == "True"
        # Superuser through the socket, as `make up` creates the roles.
        assert clone_python("from ops.db import admin_connect; c = admin_connect(pg.s); cur = c.cursor(); "
                            "cur.execute('SELECT 6 * 7'); print(cur.fetchone()[0])").strip() == "42"
        assert "ready to accept connections" in (clone / "logs" / "postgres.log").read_text()
        if os.geteuid() == 0:
            outside = data.resolve().parent
            assert data.is_symlink() and (clone / "var" / "run" / "pg").resolve() == outside / "run"
            assert outside.owner() == "postgres" and not outside.is_relative_to(closed)
        clone_python("pg.stop()")
        wait_for(lambda: not (data / "postmaster.pid").exists(), 30, "the clone's server to stop")
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([sys.executable, "-c", "from cryptopipe.settings import get_settings; "
                            "from ops.postgres import Postgres; Postgres(get_settings()).stop()"],
                           cwd=clone, env=env, timeout=120)
        if data.is_symlink():
            shutil.rmtree(data.resolve().parent)
        shutil.rmtree(closed)
