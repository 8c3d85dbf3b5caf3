"""The native stack without Docker: PostgreSQL, Redis, Kafka (KRaft), Kafka Connect (and its watchdog), Flink (and the
keeper of its stream job) and Airflow as local processes.

    python -m ops.stack up        start in dependency order, each checked ready before the next, then prepare
    python -m ops.stack down      stop exactly what `up` started (pid files in var/run)
    python -m ops.stack prepare   only create the declared topics and the database (docker-compose's init)

(`python -m ops.status` shows its health.) State lives in var/ and logs in logs/<service>.log, both gitignored.
"""

from __future__ import annotations

import sys
import time

from confluent_kafka.admin import AdminClient

from cryptopipe import topics
from cryptopipe.settings import Settings, load_settings
from ops import airflow, db, flink, kafka_security, monitoring
from ops.connect_watchdog import ConnectWatchdog
from ops.flink_deploy import FlinkJobKeeper
from ops.flink_ui import FlinkUi
from ops.kafka_admin import ensure_topics
from ops.postgres import Postgres
from ops.process import StackError, port_open, process_exists, wait_until
from ops.services import Connect, Kafka, Redis, Service


class NativeStack:
    """Starts and stops the native stack described by one Settings, in dependency order."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.services: list[Service] = [Postgres(settings), Redis(settings), Kafka(settings), Connect(settings),
                                        ConnectWatchdog(settings), *flink.services(settings), FlinkJobKeeper(settings),
                                        FlinkUi(settings), *airflow.services(settings), *monitoring.services(settings)]

    def service(self, name: str) -> Service:
        return next(svc for svc in self.services if svc.name == name)

    def preflight(self) -> list[Service]:
        """The services to start; fails before starting anything when a port is taken or a binary missing."""
        todo = [svc for svc in self.services if svc.pid() is None]
        for svc in todo:
            if svc.port is not None and port_open("127.0.0.1", svc.port):
                raise StackError(
                    f"Port {svc.port} for {svc.name} is already in use by a process this stack did not start. "
                    f"Stop that process, or set {svc.port_var} in .env to a free port."
                )
        for svc in todo:
            svc.preflight()
        return todo

    def up(self) -> None:
        self.s.var_dir.joinpath("run").mkdir(parents=True, exist_ok=True)
        self.s.logs_dir.mkdir(parents=True, exist_ok=True)
        todo = self.preflight()
        pending: list[tuple[Service, float]] = []
        for svc in self.services:
            if svc not in todo:
                print(f"  {svc.name:<10} already running (pid {svc.pid()})")
            else:
                started = time.monotonic()
                svc.start()
                if svc.wait_later:
                    pending.append((svc, started))
                    continue
                wait_until(svc.name, svc.ready, self.s.start_timeout_s, svc.log_file)
                print(f"  {svc.name:<10} up on {svc.address} ({time.monotonic() - started:.1f} s)")
            if isinstance(svc, Kafka):
                # Every client after it (Connect first) logs in with a SCRAM user these make: also on a running
                # broker, so a password changed in .env takes effect at the next `make up`.
                print(f"  {'kafka':<10} {kafka_security.apply(self.s)}")
        for svc, started in pending:
            wait_until(svc.name, svc.ready, self.s.start_timeout_s, svc.log_file)
            print(f"  {svc.name:<10} up ({time.monotonic() - started:.1f} s)")

    def down(self) -> None:
        for svc in reversed(self.services):
            pid = svc.pid()
            if pid is None:
                print(f"  {svc.name:<10} not running")
            else:
                svc.stop()
                # pg_ctl returns once the pid file is gone, a moment before the process itself.
                wait_until(f"{svc.name} (pid {pid}) to exit", lambda: not process_exists(pid), 30)
                print(f"  {svc.name:<10} stopped")
            svc.pid_file.unlink(missing_ok=True)


def prepare(settings: Settings) -> None:
    """Topics and tables, both idempotent: what every part of the pipeline expects to find."""
    done = ensure_topics(AdminClient(settings.kafka_config()), topics.declared(settings))
    created = sorted(name for name, what in done.items() if what != "exists")
    print(f"  topics     {len(done)} declared" + (f", created or changed: {', '.join(created)}" if created else ", all present"))
    db.init(settings)
    print(f"  database   {settings.pg_database}: roles, tables and grants in place")


def main(argv: list[str]) -> int:
    commands = ("up", "down", "prepare")
    if len(argv) != 2 or argv[1] not in commands:
        print(f"usage: python -m ops.stack {{{'|'.join(commands)}}}", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
        if argv[1] == "prepare":
            prepare(settings)
            return 0
        stack = NativeStack(settings)
        if argv[1] == "down":
            stack.down()
            return 0
        stack.up()
        prepare(settings)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    cli()
