"""The Connect watchdog: restarts what failed in Kafka Connect, with backoff, so no failed task waits for a human.

    python -m ops.connect_watchdog      (a service of the native stack: `make up` starts it after Connect)

Kafka Connect 4.3 never restarts a failed task by itself. The JDBC sinks retry connection errors for a few
minutes (`connection.restart.on.errors`, `flush.max.retries` in connectors/*.json); whatever still fails
(a longer database outage, a permission or constraint error that is fixed later) ends FAILED. Every
WATCHDOG_INTERVAL_S this reads `GET /connectors?expand=status` and restarts each connector with a FAILED
connector or task (`POST /connectors/{name}/restart?includeTasks=true&onlyFailed=true`): at once the first
time, then after a backoff (cryptopipe.retry.backoff: random, WATCHDOG_BACKOFF_S on average, doubling while it
keeps failing, at most WATCHDOG_BACKOFF_MAX_S; a connector RUNNING for HEALTHY_AFTER_S starts the count again).
Each restart is logged with the first line of the failure's trace and its root cause (the innermost `Caused
by:`), and var/run/connect-watchdog.json holds per connector its state, restarts, last failure, its cause and
the last restart (`make status` shows them). While Connect itself does not answer (restarting), it waits.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import asdict, dataclass

import requests

from cryptopipe.logs import LOG_FILE_VAR
from cryptopipe.retry import backoff
from cryptopipe.run import read_status, serve, write_status
from cryptopipe.settings import Settings
from ops.connectors import all_statuses
from ops.services import Service

NAME = "connect-watchdog"
HEALTHY_AFTER_S = 60.0  # RUNNING this long after a restart: the next failure restarts at once again

log = logging.getLogger(NAME)


def now_ms() -> int:
    return int(time.time() * 1000)


def first_line(trace: str | None) -> str:
    lines = (trace or "").strip().splitlines()
    return lines[0][:300] if lines else "no trace"


def root_cause(trace: str | None) -> str | None:
    """The innermost `Caused by:` of a Java trace (the first line is often only `Exiting WorkerSinkTask`)."""
    causes = [line.strip().removeprefix("Caused by: ") for line in (trace or "").splitlines()
              if line.startswith("Caused by: ")]
    return causes[-1][:300] if causes else None


def failed_parts(status: dict) -> list[tuple[str, dict]]:
    """(what, state) of the connector and of each task that is FAILED, from one connector's status."""
    parts = [("connector", status["connector"])] + [(f"task {t['id']}", t) for t in status.get("tasks", [])]
    return [(what, st) for what, st in parts if st["state"] == "FAILED"]


def summary(status: dict) -> str:
    """One word for a connector: FAILED if anything failed, else its own state or its tasks' when they differ."""
    if failed_parts(status):
        return "FAILED"
    states = {status["connector"]["state"], *(t["state"] for t in status.get("tasks", []))}
    return states.pop() if len(states) == 1 else "/".join(sorted(states))


@dataclass
class Watch:
    """What the watchdog knows of one connector; all but the last two fields go to the status file."""

    state: str = "-"
    restarts: int = 0  # restarts by the watchdog (kept across its own restarts)
    failures: int = 0  # restarts in a row without HEALTHY_AFTER_S of RUNNING in between
    last_failure: str | None = None  # the first line of the failed connector's or task's trace
    last_cause: str | None = None  # its innermost `Caused by:`
    last_failure_at: int | None = None  # epoch ms
    last_restart_at: int | None = None  # epoch ms
    next_restart: float = 0.0  # monotonic: no restart before
    running_since: float | None = None  # monotonic

    def report(self) -> dict:
        out = asdict(self)
        del out["next_restart"], out["running_since"]
        return out


class Watchdog:
    def __init__(self, settings: Settings):
        self.s = settings
        self.delays = backoff(settings.watchdog_backoff_s, settings.watchdog_backoff_max_s)
        self.stopping = threading.Event()
        self.http = requests.Session()
        self.http.auth = settings.connect_auth
        self.connect_error: str | None = None
        try:  # the counts of the previous run, so a restarted watchdog keeps the history
            previous = (read_status(settings, NAME) or {}).get("connectors", {})
        except ValueError:
            previous = {}
        fields = set(Watch.__dataclass_fields__) - {"next_restart", "running_since"}
        self.watches = {name: Watch(**{k: v for k, v in w.items() if k in fields}) for name, w in previous.items()}

    def stop(self, *_args) -> None:
        self.stopping.set()

    def run(self) -> None:
        log.info("watching %s every %.0f s", self.s.connect_url, self.s.watchdog_interval_s)
        while not self.stopping.is_set():
            self.tick()
            self.stopping.wait(self.s.watchdog_interval_s)
        log.info("stopped")

    def statuses(self) -> dict | None:
        """Every connector's status, or None while Connect does not answer (logged once per outage)."""
        try:
            statuses = all_statuses(self.s.connect_url, self.http)
        except (requests.RequestException, ValueError) as err:
            if self.connect_error is None:
                log.warning("Kafka Connect does not answer (%s); waiting for it", err)
            self.connect_error = str(err)[:300]
            return None
        if self.connect_error is not None:
            log.info("Kafka Connect answers again")
            self.connect_error = None
        return statuses

    def tick(self) -> None:
        statuses = self.statuses()
        if statuses is not None:
            self.watches = {name: self.watches.get(name) or Watch() for name in statuses}
            for name, status in statuses.items():
                if status:  # a connector created a moment ago may have none yet
                    self.check(name, status, self.watches[name])
        write_status(self.s, NAME, {"updated_at": now_ms(), "connect_url": self.s.connect_url,
                                    "connect_error": self.connect_error,
                                    "connectors": {n: w.report() for n, w in sorted(self.watches.items())}})

    def check(self, name: str, status: dict, watch: Watch) -> None:
        now = time.monotonic()
        watch.state = summary(status)
        failed = failed_parts(status)
        if not failed:
            if watch.state != "RUNNING":
                watch.running_since = None
            elif watch.running_since is None:
                watch.running_since = now
            elif now - watch.running_since >= HEALTHY_AFTER_S:
                watch.failures = 0
            return
        watch.running_since = None
        what, part = failed[0]
        reason, cause = first_line(part.get("trace")), root_cause(part.get("trace"))
        if now < watch.next_restart:
            return
        try:
            resp = self.http.post(f"{self.s.connect_url}/connectors/{name}/restart",
                                  params={"includeTasks": "true", "onlyFailed": "true"}, timeout=30)
        except requests.RequestException as err:
            log.warning("%s: restart not sent (%s); next tick", name, err)
            return
        if resp.status_code not in (200, 202, 204):  # 404: deleted meanwhile; 409: a rebalance, next tick
            log.warning("%s: restart refused (HTTP %d): %s", name, resp.status_code, resp.text[:200])
            return
        watch.restarts += 1
        watch.failures += 1
        watch.last_failure, watch.last_cause, watch.last_failure_at, watch.last_restart_at = (
            reason, cause, now_ms(), now_ms())
        delay = self.delays.compute(watch.failures)
        watch.next_restart = now + delay
        log.warning("%s: %s FAILED, restarted (restart %d, %d in a row; if it fails again, next restart in %.0f s): "
                    "%s%s", name, what, watch.restarts, watch.failures, delay, reason,
                    f" Cause: {cause}" if cause else "")


class ConnectWatchdog(Service):
    """The watchdog as a service of the native stack, after Connect. Ready once it writes its status file."""

    name, marker = NAME, "ops.connect_watchdog"
    wait_later = True  # nothing after it needs it
    started_at = 0  # epoch ms of the start(), so a report left by an earlier run does not count

    def start(self) -> None:
        self.started_at = now_ms()
        self.spawn([sys.executable, "-m", "ops.connect_watchdog"], env={LOG_FILE_VAR: str(self.log_file)},
                   stdout=self.s.logs_dir / f"{NAME}.out")

    def ready(self) -> bool:
        # Alive, and its report is recent (it writes one every interval, also while Connect is away).
        status = read_status(self.s, NAME)
        fresh_ms = max(3 * self.s.watchdog_interval_s, 30) * 1000
        return (self.pid() is not None and status is not None
                and now_ms() - fresh_ms < status["updated_at"] and status["updated_at"] >= self.started_at)


def main() -> int:
    return serve(Watchdog)


if __name__ == "__main__":
    sys.exit(main())
