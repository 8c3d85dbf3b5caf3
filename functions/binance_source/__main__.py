"""The Binance source, in the mode BINANCE_SOURCE_MODE names (`binance-source`, `make source`):

    python -m functions.binance_source          websocket (default): live streams, REST backfill at seams
    BINANCE_SOURCE_MODE=rest python -m ...      polling aggTrades per symbol
"""

from __future__ import annotations

import sys

from cryptopipe.run import serve
from cryptopipe.settings import Settings
from functions.binance_source.live import StreamSource
from functions.binance_source.source import BinanceSource


def build(settings: Settings) -> BinanceSource:
    return StreamSource(settings) if settings.binance_source_mode == "websocket" else BinanceSource(settings)


def main() -> int:
    return serve(build, metrics=True)


if __name__ == "__main__":
    sys.exit(main())
