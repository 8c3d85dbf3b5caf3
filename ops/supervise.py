"""Keep one command running: restart it when it exits, until told to stop.

    python -m ops.supervise <command> [args ...]

Airflow's scheduler, dag-processor and triggerer exit when their metadata database goes away (a PostgreSQL
restart or outage) and expect a supervisor such as systemd to start them again; on the native stack this is
that supervisor. Restarts back off from 1 s to 10 s while the command keeps failing fast, and each is logged
with the exit code. SIGTERM or SIGINT stops the command and then the supervisor.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

MIN_BACKOFF_S, MAX_BACKOFF_S = 1.0, 10.0
HEALTHY_AFTER_S = 60.0  # a run this long resets the backoff


def command(argv: list[str]) -> list[str]:
    """`argv` run under this supervisor."""
    return [sys.executable, "-m", "ops.supervise", *argv]


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} supervise: {message}", flush=True)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m ops.supervise <command> [args ...]", file=sys.stderr)
        return 2
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff = MIN_BACKOFF_S
    while True:
        started = time.monotonic()
        child = subprocess.Popen(argv)
        if stopping:  # the signal came between the check below and Popen: the new child must stop too
            child.terminate()
        code = child.wait()
        if stopping:
            return 0
        ran = time.monotonic() - started
        if ran >= HEALTHY_AFTER_S:
            backoff = MIN_BACKOFF_S
        log(f"{' '.join(argv[:2])} exited with {code} after {ran:.0f} s; restarting in {backoff:.0f} s")
        deadline = time.monotonic() + backoff
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.2)
        if stopping:
            return 0
        backoff = min(backoff * 2, MAX_BACKOFF_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
