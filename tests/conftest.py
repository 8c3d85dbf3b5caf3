"""Shared fixtures. Unit tests need nothing; the others use the running native stack (`make test` starts it)."""

from __future__ import annotations

import json
import shutil
import uuid

import psycopg2
import pytest
import requests

from cryptopipe.settings import get_settings
from ops.dag_run import environment
from ops.stack import NativeStack
from replay.server import start_in_thread
from replay.state import Replay
from replay.tape import load_tapes
from replay.ws import start_ws_in_thread

from .helpers import (REPLAY_AUTH, REPLAY_TOKEN, TAPES, Process, create_topics, delete_topics, kill_running, make_demo,
                      tape, topic_size, wait_for)


def pytest_collection_modifyitems(items):
    # The lifecycle tests stop and restart the stack, so they run after everything that uses it.
    items.sort(key=lambda item: item.get_closest_marker("lifecycle") is not None)


@pytest.fixture(scope="session")
def settings():
    return get_settings()


@pytest.fixture(scope="session")
def stack(settings):
    native = NativeStack(settings)
    down = [svc.name for svc in native.services if not svc.is_up()]
    if down:
        pytest.fail(f"the native stack is not up ({', '.join(down)} down): run `make up`, or `make test`")
    return native


@pytest.fixture
def unique():
    """A fresh name suffix, so tests never see each other's topics, tables or groups."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def airflow_env(settings, tmp_path_factory):
    """The environment for dag.test() runs: a migrated Airflow home of its own, the stack's connections."""
    return environment(settings, tmp_path_factory.mktemp("airflow"))


@pytest.fixture(scope="session")
def pipeline_data(stack):
    """The bundled tapes through the real pipeline (make demo is idempotent and quick the second time)."""
    result = make_demo()
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.fixture
def owner_cur(settings):
    """A cursor as the database owner, autocommitting."""
    owner = psycopg2.connect(**settings.pg_params("owner"))
    owner.autocommit = True
    yield owner.cursor()
    owner.close()


@pytest.fixture
def harness(settings, unique, tmp_path):
    """A replay server on chosen tapes (REST, and WebSocket streams when asked), fresh topics, and a way to
    start the source as a process."""

    class Harness:
        topic = f"test.aggtrades-{unique}"
        dlq_prefix = f"test.{unique}.dlq."
        dlq = dlq_prefix + "source"
        url: str
        ws_url = "ws://127.0.0.1:9"  # nothing listens: REST-mode tests never connect
        replay: Replay
        processes: list[Process] = []
        ws = None

        def serve(self, tapes: dict[str, str], ws: dict | None = None, **kwargs):
            """Replay `tapes` ({symbol: file}); `ws`: also serve the streams, with these server options."""
            folder = tmp_path / "tape"
            folder.mkdir(exist_ok=True)
            for name in tapes.values():
                shutil.copy(TAPES / name, folder)
            self.expected = {sym: tape(name) for sym, name in tapes.items()}
            self.replay = Replay(load_tapes(folder), **kwargs)
            self.server, self.url = start_in_thread(self.replay, token=REPLAY_TOKEN)
            if ws is not None:
                self.ws, self.ws_url = start_ws_in_thread(self.replay, **ws)

        def start(self, symbols: str, **env) -> Process:
            base = {
                "BINANCE_BASE_URL": self.url, "BINANCE_WS_URL": self.ws_url, "BINANCE_SYMBOLS": symbols,
                "BINANCE_START_TIME": "0", "AGGTRADES_TOPIC": self.topic, "DLQ_TOPIC_PREFIX": self.dlq_prefix,
                "VAR_DIR": str(tmp_path / "var"), "SOURCE_STATUS_INTERVAL_S": "0.5",
                "BINANCE_SOURCE_MODE": "websocket" if self.ws else "rest",
            }
            proc = Process("functions.binance_source", base | {k.upper(): str(v) for k, v in env.items()},
                           tmp_path / f"source-{len(self.processes)}.log")
            self.processes.append(proc)
            return proc

        def fault(self, *faults: dict) -> None:
            requests.post(f"{self.url}/_replay/faults", json=list(faults), headers=REPLAY_AUTH,
                          timeout=5).raise_for_status()

        def total(self) -> int:
            return sum(len(v) for v in self.expected.values())

        def wait_complete(self, timeout: float = 120):
            wait_for(lambda: topic_size(settings, self.topic) >= self.total(), timeout,
                     f"{self.total()} trades in {self.topic}")

        def status(self) -> dict:
            return json.loads((tmp_path / "var" / "run" / "source.json").read_text())

    h = Harness()
    create_topics(settings, h.topic, partitions=3)
    create_topics(settings, h.dlq, partitions=1)
    yield h
    kill_running(h.processes)
    if hasattr(h, "server"):
        h.server.shutdown()
    if h.ws is not None:
        h.ws.stop()
    delete_topics(settings, h.topic, h.dlq)
