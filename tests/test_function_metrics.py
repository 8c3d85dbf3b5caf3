"""The functions' metrics endpoint: where it listens (METRICS_HOST, loopback by default), and which values the
setting takes. No services."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from cryptopipe.metrics import serve
from cryptopipe.settings import Settings, load_settings
from tests.helpers import SECRETS


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
