"""Airflow in the native stack: its metadata database, the environment of its processes, and their health.

`make up` creates the `airflow` role and database in the stack's PostgreSQL, runs `airflow db migrate` when the
schema is not the installed Airflow's, then starts the api-server (UI and REST API on AIRFLOW_HOST:AIRFLOW_PORT,
behind a login), the scheduler (LocalExecutor), the dag-processor and the triggerer, each under ops.supervise
(they exit when their metadata database goes away). State lives in var/airflow, process logs in
logs/airflow-*.log, task logs in logs/airflow/.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import psycopg2
import requests
from psycopg2 import sql

from cryptopipe.settings import ROOT, Settings
from ops.airflow_env import airflow_connections
from ops.db import admin_connect
from ops.process import StackError
from ops.services import Service

ROLE = "airflow"
DATABASE = "airflow"
AIRFLOW_BIN = str(Path(sys.executable).parent / "airflow")
# The parts the api-server's health endpoint reports on, by the name `make status` shows.
COMPONENTS = {"airflow-scheduler": "scheduler", "airflow-dag-processor": "dag_processor",
              "airflow-triggerer": "triggerer"}


def home(settings: Settings) -> Path:
    return settings.var_dir / "airflow"


def derived_secret(settings: Settings, purpose: str) -> str:
    """Airflow wants a few more secrets (Fernet key, session key); derived from one, so .env holds one."""
    digest = hashlib.sha256(f"{purpose}:{settings.airflow_jwt_secret.get_secret_value()}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()


def metadata_url(settings: Settings) -> str:
    password = quote(settings.airflow_db_password.get_secret_value(), safe="")
    return f"postgresql+psycopg2://{ROLE}:{password}@{settings.pg_host}:{settings.pg_port}/{DATABASE}"


def environment(settings: Settings) -> dict[str, str]:
    """Everything Airflow's processes read, as AIRFLOW__SECTION__KEY variables (they win over airflow.cfg)."""
    return {
        "AIRFLOW_HOME": str(home(settings)),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow_parallelism),
        "AIRFLOW__CORE__FERNET_KEY": derived_secret(settings, "fernet"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home(settings) / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url(settings),
        "AIRFLOW__API__HOST": settings.airflow_host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": settings.airflow_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": derived_secret(settings, "session"),
        "AIRFLOW__API_AUTH__JWT_SECRET": settings.airflow_jwt_secret.get_secret_value(),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.logs_dir / "airflow"),
        # Two cores: one parser, and new DAG files show up within half a minute.
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
        "CRYPTO_REPORTS_DIR": str(settings.reports_dir),
        **airflow_connections(settings),
    }


def ensure_database(admin_conn, settings: Settings) -> None:
    """The `airflow` role (owns only its database) and database; re-runnable, password as a parameter."""
    with admin_conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(sql.Identifier(ROLE)))
        cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(ROLE)),
                    (settings.airflow_db_password.get_secret_value(),))
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(ROLE)))
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(DATABASE)))


def schema_revision(settings: Settings) -> str | None:
    """The metadata database's Alembic revision, or None before the first migration."""
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, dbname=DATABASE, user=ROLE,
                            password=settings.airflow_db_password.get_secret_value(), connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
            if not cur.fetchone()[0]:
                return None
            cur.execute("SELECT version_num FROM alembic_version")
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def migrate(settings: Settings, log_file: Path) -> bool:
    """`airflow db migrate` unless the schema is already what this Airflow last migrated to. True if it ran."""
    stamp = home(settings) / "migrated.json"
    from airflow import __version__ as version

    revision = schema_revision(settings)
    try:
        done = json.loads(stamp.read_text())
    except (OSError, ValueError):
        done = {}
    if revision is not None and done == {"airflow": version, "revision": revision}:
        return False
    home(settings).mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        result = subprocess.run([AIRFLOW_BIN, "db", "migrate"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **environment(settings)}, cwd=ROOT, timeout=600)
    if result.returncode != 0:
        raise StackError(f"`airflow db migrate` failed (exit {result.returncode}); see {log_file}")
    stamp.write_text(json.dumps({"airflow": version, "revision": schema_revision(settings)}))
    return True


def write_passwords(settings: Settings) -> None:
    """The login's password file, from .env: SimpleAuthManager keeps a user it finds there."""
    path = home(settings) / "passwords.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps({settings.airflow_admin_user: settings.airflow_admin_password.get_secret_value()}) + "\n")


def health(settings: Settings) -> dict:
    """The api-server's own health report (no login needed): metadatabase, scheduler, dag_processor, triggerer."""
    return requests.get(f"{settings.airflow_url}/api/v2/monitor/health", timeout=3).json()


def component_healthy(settings: Settings, component: str, since=None) -> bool:
    """Healthy by the api-server's report, and (with `since`, a UTC datetime) with a heartbeat after it."""
    report = health(settings).get(component) or {}
    if report.get("status") != "healthy":
        return False
    beat = report.get(f"latest_{component}_heartbeat")
    return since is None or (beat is not None and datetime.fromisoformat(beat) > since)


def token(settings: Settings) -> str:
    """A REST API token for the admin user (the same login as the UI's)."""
    response = requests.post(f"{settings.airflow_url}/auth/token", timeout=10, json={
        "username": settings.airflow_admin_user, "password": settings.airflow_admin_password.get_secret_value()})
    response.raise_for_status()
    return response.json()["access_token"]


class AirflowClient:
    """The few REST calls `make demo` needs: trigger a DAG run with a conf and wait for its outcome."""

    def __init__(self, settings: Settings):
        self.base = f"{settings.airflow_url}/api/v2"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token(settings)}"

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.http.request(method, f"{self.base}{path}", timeout=15, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"Airflow {method} {path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def wait_for_dag(self, dag_id: str, timeout: float) -> dict:
        """The DAG once the dag-processor has parsed it (a fresh stack parses within its refresh interval)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.call("GET", f"/dags/{dag_id}")
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict) -> str:
        run = self.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}


# ---- the processes, as services of the native stack ------------------------------------------------

def require_airflow() -> None:
    if not Path(AIRFLOW_BIN).exists():
        raise StackError(f"{AIRFLOW_BIN} not found: run `make setup` (it installs Airflow).")


class AirflowApi(Service):
    """The api-server (UI and REST API), started after its metadata database is in place and migrated."""

    name, port_var, marker = "airflow-api", "AIRFLOW_PORT", "airflow api"

    @property
    def port(self) -> int:
        return self.s.airflow_port

    def preflight(self) -> None:
        require_airflow()

    def start(self) -> None:
        conn = admin_connect(self.s)
        try:
            ensure_database(conn, self.s)
        finally:
            conn.close()
        if migrate(self.s, self.log_file):
            print("  airflow    metadata database migrated")
        write_passwords(self.s)
        self.spawn([AIRFLOW_BIN, "api-server"], env=environment(self.s))

    def ready(self) -> bool:
        return health(self.s)["metadatabase"]["status"] == "healthy"


class AirflowComponent(Service):
    """The scheduler, dag-processor or triggerer: no port of its own; ready when it heartbeats."""

    wait_later = True

    def __init__(self, settings: Settings, name: str, component: str):
        super().__init__(settings)
        self.name, self.component = name, component
        self.marker = f"airflow {name.removeprefix('airflow-')}"
        self.started_at: datetime | None = None

    def preflight(self) -> None:
        require_airflow()

    def start(self) -> None:
        argv = [AIRFLOW_BIN, self.name.removeprefix("airflow-")]
        if self.name != "airflow-dag-processor":
            # Its log server binds every interface and is not needed: all processes share logs/airflow.
            argv.append("--skip-serve-logs")
        self.started_at = datetime.now(timezone.utc)
        self.spawn(argv, env=environment(self.s))

    def ready(self) -> bool:
        # Right after a start, only a heartbeat from after it counts: one from a crashed predecessor can
        # still read as healthy for half a minute.
        return component_healthy(self.s, self.component, since=self.started_at)


def services(settings: Settings) -> list[Service]:
    return [AirflowApi(settings), *(AirflowComponent(settings, name, component)
                                    for name, component in COMPONENTS.items())]
