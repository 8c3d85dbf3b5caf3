"""Start and stop the pipeline's functions as background processes (pid files in var/run, logs in logs/).

    python -m ops.functions_ctl start [name ...]     (make run starts the PIPELINE)
    python -m ops.functions_ctl stop [name ...]      (make stop; make down stops them too)
"""

from __future__ import annotations

import sys
import time

from cryptopipe.logs import LOG_FILE_VAR
from cryptopipe.settings import Settings, load_settings
from ops.process import pid_from_file, process_exists, spawn, terminate

MODULES = {
    "source": "functions.binance_source.source",
    "stream": "functions.stream_processor.app",
    "redis-sink": "functions.redis_sink.sink",
    "alert-notifier": "functions.alert_notifier.notifier",
    "replay": "replay.server",
}
PIPELINE = ("stream", "redis-sink", "alert-notifier", "source")  # consumers first, so nothing waits on them


def pid_file(settings: Settings, name: str):
    return settings.var_dir / "run" / f"fn-{name}.pid"


def running_pid(settings: Settings, name: str) -> int | None:
    """The function's pid if it runs (checked against its command line, so a recycled pid never counts)."""
    return pid_from_file(pid_file(settings, name), MODULES[name])


def start(settings: Settings, name: str, args: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    pid = running_pid(settings, name)
    if pid is not None:
        return pid
    # Records go to logs/<name>.log (rotated by the function); the process's own stdout and stderr, which
    # only a crash before logging starts or a library's print reaches, to logs/<name>.out.
    log_env = {LOG_FILE_VAR: str(settings.logs_dir / f"{name}.log")}
    proc = spawn([sys.executable, "-m", MODULES[name], *(args or [])], settings.logs_dir / f"{name}.out",
                 pid_file(settings, name), {**log_env, **(env or {})})
    # Until exec completes, /proc shows the parent's command line: wait for it, so running_pid is right.
    deadline = time.monotonic() + 10
    while running_pid(settings, name) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc.pid


def stop(settings: Settings, name: str, timeout: float = 30.0) -> bool:
    """SIGTERM (each function flushes and commits on it), SIGKILL after the timeout. True if it was running."""
    pid = running_pid(settings, name)
    if pid is not None:
        terminate(pid, lambda: process_exists(pid), timeout, group=False)
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
