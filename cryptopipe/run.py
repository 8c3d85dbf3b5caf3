"""How each function process starts: settings, logging, SIGTERM/SIGINT wired to its stop(), then run(); and
the status file each function keeps in var/run/<name>.json."""

from __future__ import annotations

import json
import signal
from typing import Callable, Protocol

from cryptopipe.logs import setup_logging
from cryptopipe.settings import Settings, load_settings



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


def serve(build: Callable[[Settings], Function]) -> int:
    settings = load_settings()
    setup_logging(settings)
    function = build(settings)
    signal.signal(signal.SIGTERM, function.stop)
    signal.signal(signal.SIGINT, function.stop)
    function.run()
    return 0
