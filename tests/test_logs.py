"""Function logs: text or JSON lines, rotated files, crashes logged; `make run`'s functions write logs/<name>.log."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ops import functions_ctl
from cryptopipe.settings import ROOT

from .helpers import free_port, wait_for

WRITER = """
import logging
from cryptopipe.logs import setup_logging
from cryptopipe.settings import get_settings
setup_logging(get_settings())
for i in range(2000):
    logging.getLogger("demo").info("line %d of the test", i)
raise RuntimeError("boom at the end")
"""


def test_json_lines_rotate_and_a_crash_is_logged(tmp_path):
    log = tmp_path / "fn.log"
    env = {**os.environ, "CRYPTOPIPE_LOG_FILE": str(log), "LOG_FORMAT": "json", "LOG_MAX_BYTES": "20000",
           "LOG_BACKUPS": "2"}
    result = subprocess.run([sys.executable, "-c", WRITER], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["fn.log", "fn.log.1", "fn.log.2"]  # older ones dropped: 2000 lines are far over 3 files
    assert all((tmp_path / f).stat().st_size <= 20000 for f in files)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"ts", "level", "logger", "message", "pid"} <= set(records[0])
    last = records[-1]
    assert last["level"] == "CRITICAL" and "RuntimeError: boom at the end" in last["exception"]
    assert records[-2]["message"] == "line 1999 of the test"
    # The oldest lines went with the rotation, the newest survive, none is cut in half.
    kept = [json.loads(line) for f in files for line in (tmp_path / f).read_text().splitlines()]
    numbers = sorted(int(r["message"].split()[1]) for r in kept if r["logger"] == "demo")
    assert numbers == list(range(numbers[0], 2000))


def test_text_is_the_default(tmp_path):
    log = tmp_path / "fn.log"
    env = {**os.environ, "CRYPTOPIPE_LOG_FILE": str(log)}
    env.pop("LOG_FORMAT", None)
    subprocess.run([sys.executable, "-c", WRITER], env=env, cwd=ROOT, capture_output=True, timeout=60)
    first = log.read_text().splitlines()[0]
    assert " INFO demo: line 0 of the test" in first and not first.startswith("{")


def test_a_background_function_writes_its_own_log_file(stack, settings):
    """`make start FN=replay` / `make stop FN=replay`: one function on its own, logging to logs/replay.log."""
    port = free_port()
    log = settings.logs_dir / "replay.log"
    size_before = log.stat().st_size if log.exists() else 0
    env = {**os.environ, "REPLAY_PORT": str(port), "REPLAY_WS_PORT": str(free_port())}
    started = subprocess.run(["make", "start", "FN=replay"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        pid = functions_ctl.running_pid(settings, "replay")
        assert pid is not None and f"(pid {pid})" in started.stdout
        wait_for(lambda: log.exists() and f":{port} at speed" in log.read_text()[size_before:], 30,
                 "the replay server's start line in logs/replay.log")
        assert (settings.logs_dir / "replay.out").exists()
        assert functions_ctl.running_pid(settings, "source") is None  # only the one named
    finally:
        stopped = subprocess.run(["make", "stop", "FN=replay"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "replay         stopped" in stopped.stdout
    assert functions_ctl.running_pid(settings, "replay") is None
