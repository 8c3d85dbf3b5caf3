"""What monitoring costs the stack: Prometheus' memory and the slowest scrape it made, from the running stack
(its own scrape_duration_seconds over the last 15 minutes, every target)."""

from __future__ import annotations

from bench.common import record
from cryptopipe.settings import get_settings
from ops.monitoring import prometheus_api
from ops.process import tree_rss_mb
from ops.stack import NativeStack


def run() -> None:
    settings = get_settings()
    pid = NativeStack(settings).service("prometheus").pid()
    if pid is None:
        raise SystemExit("Prometheus is not running: make up starts it")
    result = prometheus_api(settings, "query", {"query": "max(max_over_time(scrape_duration_seconds[15m]))"})["result"]
    slowest = float(result[0]["value"][1]) if result else None
    record(prometheus_memory_mb=round(tree_rss_mb(pid), 1),
           scrape_duration_s_max=round(slowest, 4) if slowest is not None else None)
