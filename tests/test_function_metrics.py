"""The functions' metrics as Prometheus reads them: counters, labelled gauges and latency histograms from a
function's Counters, in the text format, checked against sums computed here; and where the endpoint listens
(METRICS_HOST). No services."""

from __future__ import annotations

import logging
import random
import socket

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from cryptopipe.metrics import CountersCollector, serve
from cryptopipe.run import LATENCY_BUCKETS, Counters
from cryptopipe.settings import Settings, load_settings
from tests.helpers import SECRETS


def scrape(counters: Counters) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry()
    registry.register(CountersCollector(counters))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counters_gauges_and_latencies_reach_the_scrape(tmp_path):
    counters = Counters(Settings(_env_file=None, **SECRETS, var_dir=tmp_path), "redis-sink", logging.getLogger("t"))
    counters.count("price_writes", 7)
    counters.count("price_writes", 5)
    counters.set("symbols", 3)
    counters.set("symbol_lag_seconds", 1.5, symbol="BTCUSDT")
    counters.set("symbol_lag_seconds", 0.25, symbol="ETHBTC")
    counters.set("symbol_lag_seconds", 2.0, symbol="BTCUSDT")  # a level: the newest wins
    latencies = [random.uniform(0, 0.2) for _ in range(500)] + [45.0]
    for seconds in latencies:
        counters.observe("write", seconds)

    got = scrape(counters)
    assert got[("cryptopipe_redis_sink_price_writes_total", ())] == 12
    assert got[("cryptopipe_redis_sink_symbols", ())] == 3
    assert got[("cryptopipe_redis_sink_symbol_lag_seconds", (("symbol", "BTCUSDT"),))] == 2.0
    assert got[("cryptopipe_redis_sink_symbol_lag_seconds", (("symbol", "ETHBTC"),))] == 0.25
    assert got[("cryptopipe_redis_sink_write_seconds_count", ())] == len(latencies)
    assert abs(got[("cryptopipe_redis_sink_write_seconds_sum", ())] - sum(latencies)) < 1e-6
    for bound in LATENCY_BUCKETS:
        le = (("le", str(float(bound))),)
        assert got[("cryptopipe_redis_sink_write_seconds_bucket", le)] == sum(1 for x in latencies if x <= bound)
    assert got[("cryptopipe_redis_sink_write_seconds_bucket", (("le", "+Inf"),))] == len(latencies)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("host", [None, "127.0.0.2"])
def test_metrics_are_served_on_metrics_host_loopback_by_default(tmp_path, host):
    # None: the default; 127.0.0.2 (loopback too) shows the address bound is the setting's.
    chosen = {} if host is None else {"metrics_host": host}
    settings = Settings(_env_file=None, **SECRETS, var_dir=tmp_path, **chosen)
    expected = host or "127.0.0.1"
    assert settings.metrics_host == expected
    port = free_port()
    server = serve(settings, port, lambda environ, start: start("200 OK", []) or [b"up\n"])
    try:
        assert server.socket.getsockname() == (expected, port)  # that address only, not every interface
        with socket.create_connection((expected, port), timeout=5) as client:
            client.sendall(f"GET /metrics HTTP/1.0\r\nHost: {expected}\r\n\r\n".encode())
            assert client.recv(100).startswith(b"HTTP/1.0 401 ")  # it answers, and still asks for the login
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("value", ["example.com", "1.2.3.4; rm", "::1", ""])
def test_metrics_host_must_be_an_ipv4_address(monkeypatch, value):
    monkeypatch.setenv("METRICS_HOST", value)
    with pytest.raises(ValidationError, match="metrics_host"):
        Settings(_env_file=None, **SECRETS)
    # What a process prints when it starts with it names the variable.
    monkeypatch.setattr("cryptopipe.settings.get_settings", lambda: Settings(_env_file=None, **SECRETS))
    with pytest.raises(SystemExit, match=r"^error: configuration: METRICS_HOST: expected an IPv4 address"):
        load_settings()
