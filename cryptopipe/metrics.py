"""Metrics for Prometheus: an HTTP endpoint behind the scrapers' login, and the functions' counters as metrics.

Every process the stack scrapes (the functions, ops.monitor) serves GET /metrics on METRICS_HOST (127.0.0.1 by
default) with HTTP basic authentication: user `prometheus`, password METRICS_PASSWORD. A function also writes a
target file into var/monitoring/targets while it runs, so Prometheus scrapes exactly the functions that were started
(file-based discovery): a function never started has no target, one killed without cleanup shows as down.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import threading
from socketserver import ThreadingMixIn
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cryptopipe.settings import Settings

SCRAPE_USER = "prometheus"
log = logging.getLogger(__name__)


def targets_dir(settings: Settings):
    return settings.var_dir / "monitoring" / "targets"


def metric_name(component: str) -> str:
    """redis-sink -> redis_sink: a component's name as the middle of its metric names."""
    return component.replace("-", "_")


class CountersCollector(Collector):
    """A function's Counters (cryptopipe.run) read at scrape time: each counter becomes
    cryptopipe_<component>_<name>_total, each gauge cryptopipe_<component>_<name> (with its labels), each latency
    its histogram. Nothing is added to the hot path: the counters are counted already."""

    def __init__(self, counters):
        self.counters = counters

    def collect(self) -> Iterable:
        prefix = f"cryptopipe_{metric_name(self.counters.name)}_"

        def doc(name: str) -> str:
            return f"{self.counters.name}: {name.replace('_', ' ')}"

        for name, value in sorted(self.counters.snapshot().items()):
            yield CounterMetricFamily(prefix + name, doc(name), value=value)
        gauges: dict[str, GaugeMetricFamily] = {}
        for (name, labels), value in sorted(self.counters.gauges().items()):
            if name not in gauges:
                gauges[name] = GaugeMetricFamily(prefix + name, doc(name), labels=[k for k, _ in labels])
            gauges[name].add_metric([v for _, v in labels], value)
        yield from gauges.values()
        for latency in list(self.counters.latencies.values()):
            yield from latency.collect()


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *_args) -> None:  # one line per scrape would drown the function's own log
        pass


def authorized(environ: dict, password: str) -> bool:
    """True when the request carries HTTP basic credentials for SCRAPE_USER with `password`."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if not header.startswith("Basic "):
        return False
    try:
        user, _, given = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both compared in full and in constant time: the answer's timing tells nothing about either.
    return hmac.compare_digest(user.encode(), SCRAPE_USER.encode()) & hmac.compare_digest(given.encode(),
                                                                                         password.encode())


def guarded(app: Callable, password: str) -> Callable:
    """`app` behind the scrapers' login: anything else gets 401 and nothing of the app."""

    def wsgi(environ, start_response):
        if not authorized(environ, password):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="metrics"'),
                                                ("Content-Type", "text/plain")])
            return [b"login required\n"]
        return app(environ, start_response)

    return wsgi


def serve(settings: Settings, port: int, app: Callable) -> WSGIServer:
    """Serves `app` (behind the login) on METRICS_HOST (127.0.0.1 by default) at `port` from a daemon thread; returns
    the server."""
    server = make_server(settings.metrics_host, port, guarded(app, settings.metrics_password.get_secret_value()),
                         server_class=Server, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True).start()
    return server


def start_function_metrics(settings: Settings, counters) -> "FunctionMetrics | None":
    """The function's metrics, or None (logged) when its port is taken: metrics never stop a function (a second
    replica on one machine, say, runs unscraped until it gets its own port in .env)."""
    try:
        return FunctionMetrics(settings, counters)
    except OSError as err:
        var = f"{metric_name(counters.name).upper()}_METRICS_PORT"
        log.warning("metrics not served: port %s: %s; set %s in .env to a free port",
                    getattr(settings, var.lower()), err, var)
        return None


class FunctionMetrics:
    """A function's metrics endpoint and its target file, for as long as the function runs."""

    def __init__(self, settings: Settings, counters):
        self.settings, self.name = settings, counters.name
        self.port = getattr(settings, f"{metric_name(self.name)}_metrics_port")
        registry = CollectorRegistry()
        registry.register(CountersCollector(counters))
        self.server = serve(settings, self.port, make_wsgi_app(registry))
        self.target = targets_dir(settings) / f"{self.name}.json"
        self.target.parent.mkdir(parents=True, exist_ok=True)
        partial = self.target.with_name(self.target.name + ".tmp")
        partial.write_text(json.dumps([{"targets": [f"127.0.0.1:{self.port}"], "labels": {"job": self.name}}]))
        partial.replace(self.target)  # whole or not at all: Prometheus rereads it whenever it changes

    def close(self) -> None:
        """A function that stops on purpose is no target any more: nothing to alert on."""
        self.target.unlink(missing_ok=True)
        self.server.shutdown()
        self.server.server_close()
