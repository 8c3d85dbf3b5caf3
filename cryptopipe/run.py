"""How each function process starts: settings, logging, SIGTERM/SIGINT wired to its stop(), then run()."""

from __future__ import annotations

import logging
import signal
from typing import Callable, Protocol

from cryptopipe.settings import Settings, load_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Function(Protocol):
    def run(self) -> None: ...

    def stop(self, *_args) -> None: ...


def serve(build: Callable[[Settings], Function]) -> int:
    settings = load_settings()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    function = build(settings)
    signal.signal(signal.SIGTERM, function.stop)
    signal.signal(signal.SIGINT, function.stop)
    function.run()
    return 0
