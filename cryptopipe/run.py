"""How each function process starts: settings, logging, SIGTERM/SIGINT wired to its stop(), then run(); and
the counters and status file each function keeps in var/run/<name>.json."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from typing import Callable, Protocol

from prometheus_client import Histogram

from cryptopipe.logs import setup_logging
from cryptopipe.metrics import start_function_metrics
from cryptopipe.settings import Settings, load_settings


# Seconds, from a Redis write on loopback (a millisecond) to an exchange request that waited out its timeouts.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Function(Protocol):
    def run(self) -> None: ...

    def stop(self, *_args) -> None: ...


def write_status(settings: Settings, name: str, status: dict) -> None:
    """Written whole, then renamed: make status and make demo read it while the function rewrites it."""
    path = settings.var_dir / "run" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(status))
    partial.replace(path)


def read_status(settings: Settings, name: str) -> dict | None:
    """A function's last status file, None if it never wrote one."""
    path = settings.var_dir / "run" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


class Counters:
    """A function's counters and its periodic status report: var/run/<name>.json with `updated_at` (epoch
    ms), `counters` and whatever the function adds, plus one log line. count() is safe from any thread."""

    def __init__(self, settings: Settings, name: str, log: logging.Logger, interval_s: float = 5.0,
                 describe: Callable[[dict], str] | None = None):
        self.settings, self.name, self.log, self.interval_s = settings, name, log, interval_s
        self.describe = describe or (lambda status: f"counters: {status['counters']}")
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.levels: dict[tuple[str, tuple], float] = {}  # (name, ((label, value), ...)) -> level
        self.latencies: dict[str, Histogram] = {}
        self.last_report = 0.0

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def set(self, name: str, value: float, **labels: str) -> None:
        """A level rather than a count (symbols followed, a symbol's lag): a gauge in the function's metrics."""
        with self.lock:
            self.levels[(name, tuple(sorted(labels.items())))] = value

    def gauges(self) -> dict[tuple[str, tuple], float]:
        with self.lock:
            return dict(self.levels)

    def observe(self, name: str, seconds: float) -> None:
        """One latency (a request, a write): histogram cryptopipe_<function>_<name>_seconds."""
        latency = self.latencies.get(name)
        if latency is None:
            with self.lock:
                latency = self.latencies.setdefault(name, Histogram(
                    f"cryptopipe_{self.name.replace('-', '_')}_{name}_seconds",
                    f"{self.name}: {name.replace('_', ' ')}", registry=None, buckets=LATENCY_BUCKETS))
        latency.observe(seconds)

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    def report(self, extra: dict | Callable[[], dict] | None = None, force: bool = False) -> dict | None:
        """Write the status file and log it, unless the last report is younger than the interval and not
        `force`. `extra` may be a callable, so a loop calling this often builds it only when it is written.
        Returns what was written, or None."""
        now = time.monotonic()
        if not force and now - self.last_report < self.interval_s:
            return None
        self.last_report = now
        status = {"updated_at": int(time.time() * 1000), "counters": self.snapshot(),
                  **((extra() if callable(extra) else extra) or {})}
        write_status(self.settings, self.name, status)
        self.log.info("%s", self.describe(status))
        return status


def serve(build: Callable[[Settings], Function], metrics: bool = False) -> int:
    """Runs one function process; with `metrics`, it serves its counters to Prometheus while it runs (the
    pipeline's functions; the stack's own helpers are read by ops.monitor instead)."""
    settings = load_settings()
    setup_logging(settings)
    function = build(settings)
    signal.signal(signal.SIGTERM, function.stop)
    signal.signal(signal.SIGINT, function.stop)
    served = start_function_metrics(settings, function.counters) if metrics else None
    try:
        function.run()
    finally:
        if served is not None:
            served.close()
    return 0
