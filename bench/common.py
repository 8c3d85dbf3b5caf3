"""Shared by the benchmarks: the results file, a replay server process and tapes made of real trades."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cryptopipe.metrics import SCRAPE_USER, FunctionMetrics
from cryptopipe.settings import ROOT

RESULTS = ROOT / "bench-results.json"
TAPES = ROOT / "data" / "binance"


def record(**figures) -> None:
    """Merge figures into bench-results.json (each benchmark writes its own keys)."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(figures)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for k, v in figures.items():
        print(f"  {k:<36} {v}")


def copies_of(tape: str, names: list[str], folder: Path) -> Path:
    """A tape folder where each name replays the same real recording (a busier market made of real trades)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(TAPES / tape, folder / f"{name}_aggtrades.json")
    return folder


class Scraped:
    """A function's metrics served (cryptopipe.metrics) and scraped every `every_s` with the login, as long as
    the `with` block runs: what metrics cost a function, measured against the same run without. The scraper runs
    in a process of its own, as Prometheus does, so only the serving side shares the function's GIL."""

    def __init__(self, settings, counters, every_s: float = 1.0):
        self.settings, self.counters, self.every_s = settings, counters, every_s
        self.scrapes = 0

    def __enter__(self):
        self.served = FunctionMetrics(self.settings, self.counters)
        login = f"{SCRAPE_USER}:{self.settings.metrics_password.get_secret_value()}"
        self.scraper = subprocess.Popen(
            [sys.executable, "-m", "bench.scrape_loop", f"http://127.0.0.1:{self.served.port}/metrics",
             str(self.every_s)], cwd=ROOT, env={**os.environ, "SCRAPE_LOGIN": login},
            stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *_exc) -> None:
        self.scraper.terminate()
        out, _ = self.scraper.communicate(timeout=10)
        self.scrapes = out.count("scraped")
        self.served.close()
        if self.scraper.returncode not in (0, -15):
            raise RuntimeError(f"the bench's scraper failed (exit {self.scraper.returncode})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ReplayProcess:
    """The replay server in its own process, as in `make demo`, so it does not share the GIL."""

    def __init__(self, tape_dir: Path, *args: str):
        self.port, self.ws_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.ws_port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "replay.server", "--tape", str(tape_dir),
                                      "--port", str(self.port), "--ws-port", str(self.ws_port), *args],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120  # thousands of tapes take a while to load
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/api/v3/ping", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("replay server did not start")

    def stats(self) -> dict:
        return requests.get(f"{self.url}/_replay/stats", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def fresh_topic(admin: AdminClient, prefix: str, partitions: int = 3) -> str:
    """A new topic for one measurement, kept whatever its records' event times."""
    name = f"bench.{prefix}-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, partitions, 1, config={"retention.ms": "-1"})])[name].result()
    return name


def produce_all(client: dict[str, str], topic: str, records, **config) -> None:
    """Produce (key, timestamp, value) records and wait until all are acknowledged."""
    producer = Producer({**client, "linger.ms": 20, "partitioner": "murmur2_random", **config})
    for key, ts, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, timestamp=ts)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)  # serve delivery reports as they come, as a producer loop should
    producer.flush(60)
