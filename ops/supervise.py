"""Keep one command running: restart it when it exits, until told to stop.

    python -m ops.supervise [--name NAME] [--var-dir DIR] <command> [args ...]

The native stack's long-running processes run under this supervisor: Redis, Kafka, Kafka Connect, Airflow's
processes (which exit when their metadata database goes away and expect a supervisor such as systemd) and the
functions `make start` launches. Whatever ends the command (a crash, an uncaught exception, SIGKILL), it is
started again after a backoff (cryptopipe.retry.backoff: random, 1 s on average after the first failure,
doubling up to 10 s while the command keeps failing; a run of a minute or more starts the count again). Each
exit and restart is logged on stdout, and with a name the supervisor keeps its state in
var/run/supervise-<name>.json (`make status` shows it). SIGTERM or SIGINT stops the command and then the
supervisor; if the supervisor dies, the kernel sends its command SIGTERM.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptopipe.retry import backoff
from cryptopipe.run import read_status, write_status
from cryptopipe.settings import ROOT, Settings

FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 10.0
HEALTHY_AFTER_S = 60.0  # a run this long resets the backoff
CRASH_LOOP_FAILURES = 3  # this many exits in a row, each before HEALTHY_AFTER_S: a crash loop
PR_SET_PDEATHSIG = 1
LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls it


def command(argv: list[str], name: str | None = None, var_dir: Path | None = None) -> list[str]:
    """`argv` run under this supervisor; with `name`, its state in <var_dir>/run/supervise-<name>.json."""
    options = (["--name", name] if name else []) + (["--var-dir", str(var_dir)] if var_dir else [])
    return [sys.executable, "-m", "ops.supervise", *options, *argv]


def is_supervised(argv: list[str]) -> bool:
    return argv[1:3] == ["-m", "ops.supervise"]


def status_name(name: str) -> str:
    return f"supervise-{name}"


def read(settings: Settings, name: str) -> dict | None:
    """The state of the supervisor named `name`, None if it never wrote one (or it is being rewritten)."""
    try:
        return read_status(settings, status_name(name))
    except ValueError:
        return None


def exit_reason(code: int) -> str:
    """Popen's return code in words: `exit 1`, `killed by SIGKILL`."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def crash_looping(status: dict | None) -> bool:
    """True while the command keeps exiting soon after each start (until a run lasts HEALTHY_AFTER_S)."""
    if not status or status.get("state") == "stopped" or status.get("failures", 0) < CRASH_LOOP_FAILURES:
        return False
    return status["state"] != "running" or now_ms() - status["started_at"] < HEALTHY_AFTER_S * 1000


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} supervise: {message}", flush=True)


def now_ms() -> int:
    return int(time.time() * 1000)


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, so no orphan outlives it (Linux)."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, argv: list[str], name: str | None, var_dir: Path):
        self.argv, self.name = argv, name
        # Only var_dir is needed: the command's own settings may be invalid, and that is its crash to report.
        self.settings = Settings.model_construct(var_dir=var_dir)
        self.delays = backoff(FIRST_BACKOFF_S, MAX_BACKOFF_S)
        self.stopping = False
        self.child: subprocess.Popen | None = None
        self.state = {"name": name, "command": " ".join(argv), "supervisor_pid": os.getpid(), "state": "starting",
                      "pid": None, "started_at": None, "restarts": 0, "failures": 0, "last_exit": None,
                      "last_exit_at": None, "last_run_s": None, "backoff_until": None}

    def save(self, **changes) -> None:
        self.state.update(changes, updated_at=now_ms())
        if self.name:
            write_status(self.settings, status_name(self.name), self.state)

    def stop(self, signum, _frame) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        what = self.name or " ".join(self.argv[:3])
        while True:
            started = time.monotonic()
            try:
                self.child = subprocess.Popen(self.argv, preexec_fn=die_with_parent)
            except OSError as err:  # a missing or unusable binary: reported and retried like a crash
                reason = f"not started: {err}"
            else:
                if self.stopping:  # the signal came between the check below and Popen: the new child must stop too
                    self.child.terminate()
                self.save(state="running", pid=self.child.pid, started_at=now_ms(), backoff_until=None)
                reason = exit_reason(self.child.wait())
            if self.stopping:
                self.save(state="stopped", pid=None)
                return 0
            ran = time.monotonic() - started
            failures = 1 if ran >= HEALTHY_AFTER_S else self.state["failures"] + 1
            delay = self.delays.compute(failures)
            self.save(state="backoff", pid=None, failures=failures, last_exit=reason, last_exit_at=now_ms(),
                      last_run_s=round(ran, 1), backoff_until=now_ms() + int(delay * 1000))
            log(f"{what}: {reason} after {ran:.0f} s (failure {failures} in a row); restarting in {delay:.1f} s")
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(0.1)
            if self.stopping:
                self.save(state="stopped", backoff_until=None)
                return 0
            self.state["restarts"] += 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.supervise", description="Keep one command running.")
    parser.add_argument("--name", help="keep state in <var-dir>/run/supervise-NAME.json")
    parser.add_argument("--var-dir", type=Path, default=Path(os.environ.get("VAR_DIR", ROOT / "var")))
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_usage(sys.stderr)
        return 2
    return Supervisor(args.command, args.name, args.var_dir).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
