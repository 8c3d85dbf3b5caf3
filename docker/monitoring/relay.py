"""Runs one of the project's processes in its container with its metrics port reachable from the other containers.

    python docker/monitoring/relay.py source_metrics_port binance-source     (a console script of the project)
    python docker/monitoring/relay.py monitor_port -m ops.monitor             (a module)

cryptopipe.metrics serves /metrics (and ops.monitor its /alerts) on 127.0.0.1 only: natively Prometheus and
Alertmanager run on that host; in compose they are other containers. A daemon thread of the process itself relays
the port the named setting holds, on the container's own address, to 127.0.0.1; then the process runs as it would
have, so its signals, exit code and restarts stay its own and the relay lives and dies with it. The relay adds no
login and takes none away: every request still needs the scrapers' login.
"""

from __future__ import annotations

import runpy
import socket
import sys
import threading
from importlib.metadata import entry_points

from cryptopipe.settings import load_settings

IDLE_S = 60  # a connection silent this long is closed (Prometheus opens another)


def pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copies `source` to `sink` until `source` ends, then ends `sink`'s sending half."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def relay_connection(client: socket.socket, port: int) -> None:
    with client:
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=IDLE_S)
        except OSError:
            return  # nothing serves there yet (or any more): the scrape fails, as it would natively
        with upstream:
            client.settimeout(IDLE_S)
            back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
            back.start()
            pipe(client, upstream)
            back.join()


def container_address() -> str:
    """The container's address on its network (Docker maps the hostname to it). Not every interface: that would
    include 127.0.0.1, where the process itself listens on the same port."""
    address = socket.gethostbyname(socket.gethostname())
    if address.startswith("127."):
        raise SystemExit(f"relay: the hostname resolves to {address}, not to the container's network address")
    return address


def start_relay(port: int, address: str) -> socket.socket:
    """Listens on `address` at `port` and relays each connection to 127.0.0.1:`port` from daemon threads; returns
    the listening socket."""
    listener = socket.create_server((address, port))

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=relay_connection, args=(client, port), daemon=True).start()

    threading.Thread(target=accept, name=f"relay-{port}", daemon=True).start()
    return listener


def main(argv: list[str]) -> int:
    if len(argv) < 3 or (argv[2] == "-m" and len(argv) < 4):
        print(f"usage: python {argv[0]} <port setting> (<console script> | -m <module>) [args...]", file=sys.stderr)
        return 2
    field, command = argv[1], argv[2:]
    start_relay(int(getattr(load_settings(), field)), container_address())
    if command[0] == "-m":
        sys.argv = command[1:]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
        return 0
    [script] = entry_points(group="console_scripts", name=command[0])
    sys.argv = command
    return script.load()()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
