"""How each function process starts: settings, logging, SIGTERM/SIGINT wired to its stop(), then run()."""

from __future__ import annotations

import signal
from typing import Callable, Protocol

from cryptopipe.logs import setup_logging
from cryptopipe.settings import Settings, load_settings



class Function(Protocol):
    def run(self) -> None: ...

    def stop(self, *_args) -> None: ...


def serve(build: Callable[[Settings], Function]) -> int:
    settings = load_settings()
    setup_logging(settings)
    function = build(settings)
    signal.signal(signal.SIGTERM, function.stop)
    signal.signal(signal.SIGINT, function.stop)
    function.run()
    return 0
