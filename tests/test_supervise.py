"""Supervision: every long-running process of the native stack comes back by itself after a crash, and a
crash loop shows in its supervisor's state (var/run/supervise-<name>.json) and in `make status`.

The first tests need no services; the function tests use the running Kafka with their own topics, group and
var/logs folders (a scratch VAR_DIR), so they never touch the pid files of the shared stack's functions."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from cryptopipe.settings import ROOT, Settings
from ops import functions_ctl, supervise
from ops.connectors import is_running
from ops.process import process_exists
from ops.services import Connect, Kafka, Redis
from replay.server import start_in_thread
from replay.state import Replay
from replay.tape import load_tapes

from .helpers import SECRETS, TAPES, create_topics, delete_topics, free_port, wait_for


def scratch(tmp_path: Path, **overrides) -> Settings:
    return Settings(_env_file=None, **SECRETS, var_dir=tmp_path / "var", logs_dir=tmp_path / "logs", **overrides)


def alive(pid: int | None) -> bool:
    return pid is not None and process_exists(pid)


# ---- the supervisor alone -----------------------------------------------------------------------------

def test_a_crashing_command_is_restarted_with_backoff_and_its_state_kept(tmp_path):
    settings = scratch(tmp_path)
    proc = subprocess.Popen(supervise.command([sys.executable, "-c", "import sys; sys.exit(3)"], "crasher",
                                              settings.var_dir), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        status = wait_for(lambda: (s := supervise.read(settings, "crasher")) and s["restarts"] >= 2 and s, 60,
                          "two restarts")
        assert status["last_exit"] == "exit 3" and status["failures"] >= 2
        assert status["supervisor_pid"] == proc.pid and status["command"].endswith("sys.exit(3)")
        wait_for(lambda: supervise.crash_looping(supervise.read(settings, "crasher")), 60, "a crash loop")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert supervise.read(settings, "crasher")["state"] == "stopped"
    assert "exit 3 after 0 s (failure 1 in a row); restarting in" in out


def test_sigterm_reaches_the_command_and_ends_the_supervisor(tmp_path):
    settings = scratch(tmp_path)
    marker = tmp_path / "terminated"
    child = (f"import signal, sys, time\n"
             f"signal.signal(signal.SIGTERM, lambda *_: (open({str(marker)!r}, 'w').close(), sys.exit(0)))\n"
             "while True: time.sleep(0.1)")
    proc = subprocess.Popen(supervise.command([sys.executable, "-c", child], "graceful", settings.var_dir), cwd=ROOT)
    status = wait_for(lambda: (s := supervise.read(settings, "graceful")) and s["state"] == "running" and s, 60,
                      "the command running")
    time.sleep(0.5)  # its signal handler in place
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert marker.exists() and not alive(status["pid"])
    assert supervise.read(settings, "graceful")["restarts"] == 0


def test_exit_reasons_read_like_the_shell():
    assert supervise.exit_reason(-9) == "killed by SIGKILL"
    assert supervise.exit_reason(-15) == "killed by SIGTERM"
    assert supervise.exit_reason(1) == "exit 1"


def test_kafka_connect_and_redis_start_under_the_supervisor(tmp_path, monkeypatch):
    """Their argv is wrapped, named after the service, and still holds the marker Service.pid() checks."""
    settings = scratch(tmp_path, kafka_port=free_port(), kafka_controller_port=free_port(), connect_port=free_port(),
                       redis_port=free_port())
    started = {}
    monkeypatch.setattr("ops.services.spawn", lambda argv, out, pid_path, env=None: started.update({pid_path.stem: argv}))
    (settings.var_dir / "kafka").mkdir(parents=True)
    (settings.var_dir / "kafka" / "meta.properties").write_text("formatted\n")  # no storage format run
    for svc in (Redis(settings), Kafka(settings), Connect(settings)):
        svc.start()
        argv = started[svc.name]
        assert argv[:7] == [sys.executable, "-m", "ops.supervise", "--name", svc.name, "--var-dir",
                            str(settings.var_dir)], argv
        assert svc.marker in " ".join(argv)
        assert not supervise.is_supervised(argv[7:])


# ---- the functions, real processes --------------------------------------------------------------------

@pytest.fixture
def scratch_env(tmp_path, unique):
    """The environment of a `make start` that keeps its pid files, status and logs under tmp_path."""
    # On topics of its own, which only admin's ACLs cover.
    env = {**os.environ, "VAR_DIR": str(tmp_path / "var"), "LOGS_DIR": str(tmp_path / "logs"), "KAFKA_AS_ADMIN": "true"}
    yield env
    subprocess.run(["make", "stop"], cwd=ROOT, env=env, capture_output=True, timeout=120)


def test_a_function_killed_with_sigkill_comes_back_by_itself(stack, settings, scratch_env, tmp_path, unique):
    trades, candles = f"test.sup.trades.{unique}", f"test.sup.candles.{unique}"
    create_topics(settings, trades, candles)
    env = {**scratch_env, "AGGTRADES_TOPIC": trades, "CANDLES_TOPIC": candles,
           "REDIS_SINK_GROUP": f"test-sup-{unique}"}
    mine = scratch(tmp_path)
    try:
        started = subprocess.run(["make", "start", "FN=redis-sink"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=60)
        assert started.returncode == 0, started.stdout + started.stderr
        supervisor = functions_ctl.running_pid(mine, "redis-sink")
        assert supervisor is not None and f"(pid {supervisor})" in started.stdout
        first = wait_for(lambda: (s := functions_ctl.supervisor_status(mine, "redis-sink")) and s["pid"] and s, 30,
                         "the supervisor's state")
        log = mine.logs_dir / "redis-sink.log"
        wait_for(lambda: log.exists() and "reading" in log.read_text(), 60, "the sink running")
        os.kill(first["pid"], signal.SIGKILL)
        again = wait_for(lambda: (s := functions_ctl.supervisor_status(mine, "redis-sink"))
                         and s["state"] == "running" and s["restarts"] == 1 and s, 60, "a restart")
        assert again["pid"] != first["pid"] and alive(again["pid"])
        assert again["last_exit"] == "killed by SIGKILL"
        assert functions_ctl.running_pid(mine, "redis-sink") == supervisor  # the same supervisor, same pid file
        wait_for(lambda: log.read_text().count("reading") >= 2, 60, "the restarted sink reading again")
        assert "killed by SIGKILL" in (mine.logs_dir / "redis-sink.out").read_text()
        stopped = subprocess.run(["make", "stop", "FN=redis-sink"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=60)
        assert "redis-sink     stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        assert not alive(again["pid"]) and not alive(supervisor)
        assert supervise.read(mine, "fn-redis-sink")["state"] == "stopped"
    finally:
        delete_topics(settings, trades, candles)


@pytest.mark.parametrize("name, env, why", [
    ("source", {"BINANCE_SYMBOLS": "NOSUCHSYMBOL"}, "none of BINANCE_SYMBOLS is listed"),
    ("alert-notifier", {"ALERT_MOVE_PCT": "nan"}, "ALERT_MOVE_PCT: input should be a finite number"),
])
def test_a_crash_loop_shows_in_make_status(stack, scratch_env, tmp_path, name, env, why):
    """A function that exits 1 at each start (the source with BINANCE_SYMBOLS naming no listed symbol, or any
    function with a bad setting) keeps being restarted, and make status shows its restarts and last exit."""
    tapes = tmp_path / "tape"
    tapes.mkdir()
    shutil.copy(TAPES / "btcusdt_aggtrades_20210404.json", tapes / "BTCUSDT_aggtrades.json")
    server, url = start_in_thread(Replay(load_tapes(tapes)))
    mine = scratch(tmp_path)
    dirs = {k: v for k, v in scratch_env.items() if k in ("VAR_DIR", "LOGS_DIR")}
    try:
        functions_ctl.start(mine, name, env={**dirs, "BINANCE_BASE_URL": url, **env})
        status = wait_for(lambda: (s := functions_ctl.supervisor_status(mine, name)) and s["restarts"] >= 2 and s,
                          90, f"two restarts of {name}")
        assert status["last_exit"] == "exit 1"
        assert why in (mine.logs_dir / f"{name}.out").read_text()
        shown = subprocess.run([sys.executable, "-m", "ops.status"], cwd=ROOT, env=scratch_env, capture_output=True,
                               text=True, timeout=120)
        functions = shown.stdout.split("Functions")[1].split("Kafka topics")[0]
        row = next(line for line in functions.splitlines() if line.startswith(f"│ {name} "))
        cells = [c.strip() for c in row.strip().strip("│").split("│")]
        assert cells[1] in ("running", "restarting", "crash loop"), row
        assert int(cells[3]) >= 2 and cells[4].startswith("exit 1, "), row
    finally:
        assert functions_ctl.stop(mine, name)
        server.shutdown()


# ---- a service, real processes ------------------------------------------------------------------------

def test_a_killed_redis_comes_back_under_its_supervisor_and_stop_ends_both(tmp_path):
    """A scratch Redis on its own port and folder: the shared stack's services are not touched."""
    svc = Redis(scratch(tmp_path, redis_port=free_port()))
    svc.start()
    try:
        wait_for(svc.is_up, 30, "the scratch Redis")
        supervisor = svc.pid()
        first = svc.supervisor_status()
        assert supervisor is not None and first["supervisor_pid"] == supervisor and alive(first["pid"])
        os.kill(first["pid"], signal.SIGKILL)
        again = wait_for(lambda: (s := svc.supervisor_status()) and s["restarts"] == 1 and s["state"] == "running"
                         and s, 30, "Redis restarted")
        assert again["last_exit"] == "killed by SIGKILL" and again["pid"] != first["pid"]
        wait_for(svc.is_up, 30, "the restarted Redis answering")
        assert svc.pid() == supervisor
    finally:
        svc.stop()
    wait_for(lambda: not alive(supervisor), 30, "the supervisor gone")
    assert not alive(again["pid"])


def test_a_killed_connect_jvm_comes_back_by_itself(stack, settings):
    """The shared stack's Connect, once: SIGKILL its JVM; its supervisor starts it again, the connectors run."""
    svc = stack.service("connect")
    before = svc.supervisor_status()
    assert before is not None, "Connect runs without a supervisor (started by an older `make up`): make down && make up"
    supervisor = svc.pid()
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for(lambda: (s := svc.supervisor_status()) and s["restarts"] == before["restarts"] + 1
                     and s["state"] == "running" and s, 60, "Connect restarted")
    assert after["last_exit"] == "killed by SIGKILL" and after["pid"] != before["pid"]
    wait_for(svc.is_up, settings.start_timeout_s, "Connect's REST API answering again", 1)
    assert svc.pid() == supervisor

    def connectors_running():
        statuses = requests.get(f"{settings.connect_url}/connectors", params={"expand": "status"}, auth=settings.connect_auth, timeout=5).json()
        return all(is_running(info["status"]) for info in statuses.values())

    wait_for(connectors_running, 120, "every connector RUNNING again", 1)
