"""Start and stop the pipeline's functions as background processes (pid files in var/run, logs in logs/).

    python -m ops.functions_ctl start [name ...]     (make run starts the PIPELINE)
    python -m ops.functions_ctl stop [name ...]      (make stop; make down stops them too)

Each runs under ops.supervise, which starts it again with backoff when it exits: the pid file holds the
supervisor's pid (its command line names the function's module), var/run/supervise-fn-<name>.json its
restarts and last exit.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from cryptopipe.logs import LOG_FILE_VAR
from cryptopipe.settings import Settings, load_settings
from ops import supervise
from ops.process import pid_from_file, process_exists, spawn, terminate

MODULES = {
    "source": "functions.binance_source",
    "redis-sink": "functions.redis_sink.sink",
    "alert-notifier": "functions.alert_notifier.notifier",
    "replay": "replay.server",
}
# Consumers first, so nothing waits on them. The stream engine is Flink's job, which the stack keeps running.
PIPELINE = ("redis-sink", "alert-notifier", "source")


def pid_file(settings: Settings, name: str):
    return settings.var_dir / "run" / f"fn-{name}.pid"


def supervisor_name(name: str) -> str:
    return f"fn-{name}"


def running_pid(settings: Settings, name: str) -> int | None:
    """The pid of the function's supervisor if it runs (checked against its command line, which holds the
    function's module, so a recycled pid never counts)."""
    return pid_from_file(pid_file(settings, name), MODULES[name])


def supervisor_status(settings: Settings, name: str) -> dict | None:
    """The running supervisor's state (ops.supervise): the function's own pid, restarts, last exit, backoff;
    None when the function is not running under a supervisor."""
    pid = running_pid(settings, name)
    status = supervise.read(settings, supervisor_name(name)) if pid is not None else None
    return status if status and status.get("supervisor_pid") == pid else None


def start(settings: Settings, name: str, args: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    pid = running_pid(settings, name)
    if pid is not None:
        return pid
    # Records go to logs/<name>.log (rotated by the function); the process's own stdout and stderr, which
    # only a crash before logging starts or a library's print reaches, and the supervisor's lines on each
    # exit and restart, to logs/<name>.out.
    log_env = {LOG_FILE_VAR: str(settings.logs_dir / f"{name}.log")}
    argv = supervise.command([sys.executable, "-m", MODULES[name], *(args or [])], supervisor_name(name),
                             settings.var_dir)
    proc = spawn(argv, settings.logs_dir / f"{name}.out", pid_file(settings, name), {**log_env, **(env or {})})
    # Until exec completes, /proc shows the parent's command line: wait for it, so running_pid is right.
    deadline = time.monotonic() + 10
    while running_pid(settings, name) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc.pid


def stop(settings: Settings, name: str, timeout: float = 30.0) -> bool:
    """SIGTERM to the supervisor, which passes it on (each function flushes and commits on it) and exits
    after the function; SIGKILL to both after the timeout. True if it was running."""
    pid = running_pid(settings, name)
    if pid is not None:
        terminate(pid, lambda: process_exists(pid), timeout, group=False)
        try:
            os.killpg(pid, signal.SIGKILL)  # the supervisor leads the group: whatever is left of it
        except ProcessLookupError:
            pass
    pid_file(settings, name).unlink(missing_ok=True)
    return pid is not None


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("start", "stop") or any(n not in MODULES for n in argv[2:]):
        print(f"usage: python -m ops.functions_ctl start|stop [{'|'.join(MODULES)} ...]", file=sys.stderr)
        return 2
    settings = load_settings()
    names = argv[2:] or (PIPELINE if argv[1] == "start" else tuple(MODULES))
    for name in names:
        if argv[1] == "start":
            print(f"  {name:<14} running (pid {start(settings, name)}), log: logs/{name}.log")
        else:
            print(f"  {name:<14} {'stopped' if stop(settings, name) else 'not running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
