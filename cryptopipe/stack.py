"""The native stack without Docker: PostgreSQL, Redis, Kafka (KRaft), Kafka Connect and Airflow as local processes.

    python -m cryptopipe.stack up       start in dependency order, each checked ready before the next
    python -m cryptopipe.stack down     stop exactly what `up` started (pid files in var/run)
    python -m cryptopipe.stack status   health table; exit 1 when anything is down

State lives in var/ and logs in logs/<service>.log, both gitignored.
"""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from cryptopipe import airflow_services
from cryptopipe.settings import ROOT, Settings, load_settings

CONFIG_DIR = ROOT / "stack" / "config"
LIB_DIR = ROOT / "stack" / "lib"
PLUGIN_DIR = LIB_DIR / "plugins"
JDBC_SINK_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"


class StackError(Exception):
    """A problem the user must fix; the message names it and the fix."""


@dataclass
class Service:
    name: str
    port: int | None  # None: listens nowhere of its own (Airflow's scheduler, dag-processor, triggerer)
    port_var: str  # the setting that moves it, named in error messages
    marker: str  # a string in the process's command line, so a recycled pid is never taken for ours
    start: Callable[[], None]
    ready: Callable[[], bool]
    stop: Callable[[], None] | None = None
    # Independent of the services after it: start those without waiting, check this one at the end.
    wait_later: bool = False


def read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def write_properties(path: Path, props: dict[str, str]) -> None:
    path.write_text("# Written by cryptopipe.stack from stack/config; edit that, not this.\n" + "".join(
        f"{k}={v}\n" for k, v in props.items()
    ))


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def process_exists(pid: int) -> bool:
    """True while the process runs; an exited child waiting to be reaped counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def spawn(argv: list[str], log_path: Path, pid_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a process in its own session, output appended to its log, pid recorded in its pid file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    pid_path.write_text(f"{proc.pid}\n")
    return proc


def supervised(argv: list[str]) -> list[str]:
    """The command under cryptopipe.supervise, which restarts it when it exits (Airflow's processes exit when
    PostgreSQL goes away and come back once it answers again)."""
    return [sys.executable, "-m", "cryptopipe.supervise", *argv]


def rotate_at_start(path: Path, max_bytes: int, backups: int) -> None:
    """For services that write their log through stdout (which cannot be reopened while they run): keep a
    large log as <name>.1 (older ones shifted up to `backups`) before the service starts again."""
    if not path.exists() or path.stat().st_size < max_bytes:
        return
    for i in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total_kb, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, flags=re.M)
        total_kb += int(match.group(1)) if match else 0
        todo.extend(children.get(current, []))
    return total_kb / 1024


def wait_until(what: str, check: Callable[[], bool], timeout: float, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not ready yet: the check talks to a service that is still starting
            pass
        time.sleep(0.25)
    hint = f"; see {log_file}" if log_file else ""
    raise StackError(f"{what} was not ready after {timeout:.0f} s{hint}")


class NativeStack:
    """Starts, stops and inspects the native stack described by one Settings."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.started_at: dict[str, datetime] = {}
        self.var = settings.var_dir
        self.run_dir = self.var / "run"
        self.logs = settings.logs_dir
        self.services = [
            Service("postgres", settings.pg_port, "PG_PORT", "postgres", self.start_postgres, self.postgres_ready,
                    self.stop_postgres),
            Service("redis", settings.redis_port, "REDIS_PORT", "redis-server", self.start_redis, self.redis_ready),
            Service("kafka", settings.kafka_port, "KAFKA_PORT", "kafka.Kafka", self.start_kafka, self.kafka_ready),
            Service("connect", settings.connect_port, "CONNECT_PORT", "ConnectDistributed", self.start_connect,
                    self.connect_ready),
            Service("airflow-api", settings.airflow_port, "AIRFLOW_PORT", "airflow api", self.start_airflow_api,
                    self.airflow_api_ready),
            *[Service(name, None, "", f"airflow {name.removeprefix('airflow-')}", self.airflow_starter(name),
                      self.airflow_component_ready(name, component), wait_later=True)
              for name, component in airflow_services.COMPONENTS.items()],
        ]

    # ---- process bookkeeping -------------------------------------------------------------------

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_of(self, svc: Service) -> int | None:
        """The pid `up` recorded for the service, if that process still runs and is the service."""
        path = self.pid_file(svc.name)
        if svc.name == "postgres":
            path = self.var / "postgres" / "postmaster.pid"
        try:
            pid = int(path.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            return None
        return pid if svc.marker in cmdline else None

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, stdout: Path | None = None) -> None:
        """Start a service; its stdout goes to its log (rotated at each start when large), or to `stdout`."""
        out = stdout or self.log_file(name)
        rotate_at_start(out, self.s.log_max_bytes, self.s.log_backups)
        spawn(argv, out, self.pid_file(name), env)

    def terminate(self, svc: Service, timeout: float = 60.0) -> None:
        pid = self.pid_of(svc)
        if pid is None:
            return
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pid_of(svc) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.pid_of(svc) is not None:
            os.killpg(pid, signal.SIGKILL)

    # ---- checks before anything starts ---------------------------------------------------------

    def java(self) -> str:
        java = shutil.which(self.s.java)
        if java is None:
            raise StackError(
                f"Java not found (JAVA={self.s.java}). Install Java 17+ (as root: apt-get install "
                "openjdk-17-jre-headless, or run `make setup`), or set JAVA to the java binary."
            )
        out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
        match = re.search(r'version "(\d+)', out)
        if match is None or int(match.group(1)) < 17:
            raise StackError(f"{java} is not Java 17 or newer ({out.strip().splitlines()[0]}); set JAVA to a newer one.")
        return java

    def require_jars(self, folder: str) -> str:
        if not list((LIB_DIR / folder).glob("*.jar")):
            raise StackError(f"No Kafka jars in stack/lib/{folder}: run `make setup` (it resolves them with Maven).")
        return str(LIB_DIR / folder / "*")

    def pg_bindir(self) -> Path:
        if self.s.pg_bindir:
            candidates = [Path(self.s.pg_bindir)]
        else:
            found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
            candidates = [p.parent for p in reversed(found)]
            if shutil.which("pg_ctl"):
                candidates.append(Path(shutil.which("pg_ctl")).resolve().parent)
        for bindir in candidates:
            if (bindir / "postgres").exists() and (bindir / "initdb").exists():
                return bindir
        raise StackError(
            "PostgreSQL server binaries not found: run `make setup` (as root it installs postgresql-15), "
            "or set PG_BINDIR to the folder holding postgres, initdb and pg_ctl."
        )

    def preflight(self) -> list[Service]:
        """The services to start; fails before starting anything when a port is taken or a binary missing."""
        todo = [svc for svc in self.services if self.pid_of(svc) is None]
        for svc in todo:
            if svc.port is not None and port_open("127.0.0.1", svc.port):
                raise StackError(
                    f"Port {svc.port} for {svc.name} is already in use by a process this stack did not start. "
                    f"Stop that process, or set {svc.port_var} in .env to a free port."
                )
        names = {svc.name for svc in todo}
        if names & {"kafka", "connect"}:
            self.java()
            self.require_jars("broker")
            self.require_jars("connect")
            if not list(PLUGIN_DIR.glob("debezium-connector-jdbc/*.jar")):
                raise StackError("The Debezium JDBC sink plugin is missing from stack/lib/plugins: run `make setup`.")
        if "redis" in names and shutil.which("redis-server") is None:
            raise StackError("redis-server not found: run `make setup` (as root it installs redis-server).")
        if "postgres" in names:
            self.check_postgres_data(self.pg_bindir())
        if any(name.startswith("airflow") for name in names) and not Path(airflow_services.AIRFLOW_BIN).exists():
            raise StackError(f"{airflow_services.AIRFLOW_BIN} not found: run `make setup` (it installs Airflow).")
        return todo

    # ---- PostgreSQL ----------------------------------------------------------------------------

    def pg_user(self) -> str | None:
        """PostgreSQL refuses to run as root, so as root it runs as the `postgres` system user."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise StackError("Running as root, but there is no `postgres` system user: run `make setup`.") from None
        return "postgres"

    def as_pg_user(self, argv: list[str]) -> list[str]:
        user = self.pg_user()
        return ["runuser", "-u", user, "--", *argv] if user else argv

    def chown_pg(self, *paths: Path) -> None:
        user = self.pg_user()
        for path in paths:
            if user:
                shutil.chown(path, user, user)

    def check_postgres_data(self, bindir: Path) -> None:
        version_file = self.var / "postgres" / "PG_VERSION"
        if not version_file.exists():
            return
        data_major = version_file.read_text().strip()
        server = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout
        server_major = re.search(r"PostgreSQL\) (\d+)", server).group(1)
        if data_major != server_major:
            raise StackError(
                f"{self.var / 'postgres'} holds a PostgreSQL {data_major} cluster but the server found is "
                f"PostgreSQL {server_major}. Nothing was deleted. Set PG_BINDIR to a PostgreSQL {data_major} "
                f"bin folder, or move the folder away (after pg_dumpall with the old server) to start afresh."
            )

    def start_postgres(self) -> None:
        bindir = self.pg_bindir()
        data = self.var / "postgres"
        sock = self.run_dir / "pg"
        sock.mkdir(parents=True, exist_ok=True)
        log = self.log_file("postgres")
        rotate_at_start(log, self.s.log_max_bytes, self.s.log_backups)
        log.touch()
        self.chown_pg(sock, log)
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            data.chmod(0o700)
            self.chown_pg(data)
            subprocess.run(
                self.as_pg_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                 "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256"]),
                check=True, stdout=subprocess.DEVNULL,
            )
            with open(data / "postgresql.conf", "a") as conf:
                conf.write("\n" + (CONFIG_DIR / "postgresql.conf").read_text())
        subprocess.run(
            self.as_pg_user([str(bindir / "pg_ctl"), "start", "-w", "-t", str(int(self.s.start_timeout_s)),
                             "-D", str(data), "-l", str(log), "-o", f"-p {self.s.pg_port} -k {sock}"]),
            check=True, stdout=subprocess.DEVNULL,
        )

    def postgres_ready(self) -> bool:
        bindir = self.pg_bindir()
        return subprocess.run(
            [str(bindir / "pg_isready"), "-q", "-h", self.s.pg_host, "-p", str(self.s.pg_port)]
        ).returncode == 0

    def stop_postgres(self) -> None:
        if self.pid_of(self.services[0]) is None:
            return
        subprocess.run(
            self.as_pg_user([str(self.pg_bindir() / "pg_ctl"), "stop", "-m", "fast", "-w", "-D",
                             str(self.var / "postgres")]),
            check=True, stdout=subprocess.DEVNULL,
        )

    # ---- Redis ---------------------------------------------------------------------------------

    def start_redis(self) -> None:
        data = self.var / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.spawn("redis", [
            "redis-server", str(CONFIG_DIR / "redis.conf"), "--port", str(self.s.redis_port),
            "--bind", self.s.redis_host, "--dir", str(data), "--daemonize", "no", "--logfile", "",
        ])

    def redis_ready(self) -> bool:
        import redis

        return bool(redis.Redis.from_url(self.s.redis_url, socket_timeout=1).ping())

    # ---- Kafka ---------------------------------------------------------------------------------

    def jvm(self, name: str, heap: str, classpath: str) -> list[str]:
        return [
            self.java(), "-Xms256m", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={CONFIG_DIR / 'log4j2.properties'}", f"-Dcryptopipe.service={name}",
            f"-Dcryptopipe.logs={self.logs}",
            "-cp", classpath,
        ]

    def start_kafka(self) -> None:
        host, port, cport = self.s.kafka_host, self.s.kafka_port, self.s.kafka_controller_port
        if port_open(host, cport):
            raise StackError(f"Port {cport} for the Kafka controller is in use: set KAFKA_CONTROLLER_PORT in .env.")
        data = self.var / "kafka"
        props = read_properties(CONFIG_DIR / "kafka.properties") | {
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.quorum.voters": f"1@{host}:{cport}",
            "log.dirs": str(data),
        }
        conf = self.run_dir / "kafka.properties"
        write_properties(conf, props)
        classpath = self.require_jars("broker")
        if not (data / "meta.properties").exists():
            # Formatting happens once; an existing log folder is never re-formatted.
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            subprocess.run(
                [*self.jvm("kafka-storage", "256m", classpath), "kafka.tools.StorageTool", "format",
                 "-t", cluster_id, "-c", str(conf), "-g"],
                check=True, stdout=subprocess.DEVNULL,
            )
        # log4j2 writes and rolls logs/kafka.log itself.
        self.spawn("kafka", [*self.jvm("kafka", self.s.kafka_heap, classpath), "kafka.Kafka", str(conf)],
                   stdout=self.logs / "kafka.out")

    def kafka_ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        if not port_open(self.s.kafka_host, self.s.kafka_port):
            return False
        admin = AdminClient({"bootstrap.servers": self.s.kafka_bootstrap, "socket.timeout.ms": 2000})
        return len(admin.list_topics(timeout=2).brokers) > 0

    # ---- Kafka Connect -------------------------------------------------------------------------

    def connect_env(self) -> dict[str, str]:
        """Secrets the connector configs reference as ${env:NAME}; Connect resolves them at deploy time."""
        return {
            "PG_WRITER_PASSWORD": self.s.pg_writer_password.get_secret_value(),
            "PG_JDBC_URL": self.s.jdbc_url(),
            "KAFKA_HEAP_OPTS": "",
        }

    def start_connect(self) -> None:
        props = read_properties(CONFIG_DIR / "connect-distributed.properties") | {
            "bootstrap.servers": self.s.kafka_bootstrap,
            "listeners": f"http://{self.s.connect_host}:{self.s.connect_port}",
            "rest.advertised.host.name": self.s.connect_host,
            "rest.advertised.port": str(self.s.connect_port),
            "plugin.path": str(PLUGIN_DIR),
        }
        conf = self.run_dir / "connect.properties"
        write_properties(conf, props)
        argv = [*self.jvm("connect", self.s.connect_heap, self.require_jars("connect")),
                "org.apache.kafka.connect.cli.ConnectDistributed", str(conf)]
        self.spawn("connect", argv, env=self.connect_env(), stdout=self.logs / "connect.out")

    def connect_ready(self) -> bool:
        import requests

        # /connectors answers only once the worker has joined its group and read the config topic.
        return requests.get(f"{self.s.connect_url}/connectors", timeout=2).status_code == 200

    # ---- Airflow -------------------------------------------------------------------------------

    def start_airflow_api(self) -> None:
        from cryptopipe.db import admin_connect

        conn = admin_connect(self.s)
        try:
            airflow_services.ensure_database(conn, self.s)
        finally:
            conn.close()
        if airflow_services.migrate(self.s, self.log_file("airflow-api")):
            print("  airflow    metadata database migrated")
        airflow_services.write_passwords(self.s)
        self.spawn("airflow-api", supervised([airflow_services.AIRFLOW_BIN, "api-server"]),
                   env=airflow_services.environment(self.s))

    def airflow_api_ready(self) -> bool:
        return airflow_services.health(self.s)["metadatabase"]["status"] == "healthy"

    def airflow_starter(self, name: str) -> Callable[[], None]:
        argv = [airflow_services.AIRFLOW_BIN, name.removeprefix("airflow-")]
        if name != "airflow-dag-processor":
            # Its log server binds every interface and is not needed: all processes share logs/airflow.
            argv.append("--skip-serve-logs")

        def start() -> None:
            self.started_at[name] = datetime.now(timezone.utc)
            self.spawn(name, supervised(argv), env=airflow_services.environment(self.s))

        return start

    def airflow_component_ready(self, name: str, component: str) -> Callable[[], bool]:
        # Right after a start, only a heartbeat from after it counts: one from a crashed predecessor can
        # still read as healthy for half a minute.
        return lambda: airflow_services.component_healthy(self.s, component, since=self.started_at.get(name))

    # ---- the commands --------------------------------------------------------------------------

    def up(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        todo = self.preflight()
        pending: list[tuple[Service, float]] = []
        for svc in self.services:
            if svc not in todo:
                print(f"  {svc.name:<10} already running (pid {self.pid_of(svc)})")
                continue
            started = time.monotonic()
            svc.start()
            if svc.wait_later:
                pending.append((svc, started))
                continue
            wait_until(svc.name, svc.ready, self.s.start_timeout_s, self.log_file(svc.name))
            print(f"  {svc.name:<10} up on {self.address(svc)} ({time.monotonic() - started:.1f} s)")
        for svc, started in pending:
            wait_until(svc.name, svc.ready, self.s.start_timeout_s, self.log_file(svc.name))
            print(f"  {svc.name:<10} up ({time.monotonic() - started:.1f} s)")

    @staticmethod
    def address(svc: Service) -> str:
        return f"127.0.0.1:{svc.port}" if svc.port is not None else "-"

    def down(self) -> None:
        for svc in reversed(self.services):
            pid = self.pid_of(svc)
            if pid is None:
                print(f"  {svc.name:<10} not running")
            else:
                (svc.stop or (lambda: self.terminate(svc)))()
                # pg_ctl returns once the pid file is gone, a moment before the process itself.
                wait_until(f"{svc.name} (pid {pid}) to exit", lambda: not process_exists(pid), 30)
                print(f"  {svc.name:<10} stopped")
            self.pid_file(svc.name).unlink(missing_ok=True)

    def is_up(self, svc: Service) -> bool:
        try:
            return svc.ready()
        except Exception:
            return False


def main(argv: list[str]) -> int:
    commands = ("up", "down", "status")
    if len(argv) != 2 or argv[1] not in commands:
        print(f"usage: cryptopipe-stack {{{'|'.join(commands)}}}", file=sys.stderr)
        return 2
    try:
        stack = NativeStack(load_settings())
        if argv[1] == "status":
            from cryptopipe.status import print_status

            return print_status(stack)
        if argv[1] == "down":
            stack.down()
            return 0
        stack.up()
        prepare(stack.s)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def prepare(settings: Settings) -> None:
    """Topics and tables, both idempotent: what every part of the pipeline expects to find."""
    from confluent_kafka.admin import AdminClient

    from cryptopipe import db, topics

    done = topics.ensure_topics(AdminClient({"bootstrap.servers": settings.kafka_bootstrap}))
    created = sorted(name for name, what in done.items() if what != "exists")
    print(f"  topics     {len(done)} declared" + (f", created or changed: {', '.join(created)}" if created else ", all present"))
    db.init(settings)
    print(f"  database   {settings.pg_database}: roles, tables and grants in place")


def cli() -> None:
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    cli()
