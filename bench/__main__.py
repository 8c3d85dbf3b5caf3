"""`make bench`: every benchmark against the running native stack; figures go to bench-results.json."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench import monitoring, reports, sinks, source, stream


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print("Binance source")
        source.throughput(Path(tmp))
        source.symbols_under_lag(Path(tmp))
        source.ws_throughput(Path(tmp))
        source.ws_symbols_under_lag(Path(tmp))
        print("Stream function")
        stream.run(Path(tmp))
        print("Sinks")
        sinks.run(Path(tmp))
        print("Reports DAG")
        reports.run(Path(tmp))
        print("Monitoring")
        monitoring.run()


if __name__ == "__main__":
    main()
