"""Logging for every function process: one line per record, as text or JSON, to stderr or a rotating file.

`make run` / `make demo` start the functions with CRYPTOPIPE_LOG_FILE=logs/<name>.log, so each writes its own
file and rotates it (LOG_MAX_BYTES, LOG_BACKUPS) instead of growing without bound; in the foreground
(`make source`, tests) records go to stderr. LOG_FORMAT=json gives one JSON object per line for log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler

from cryptopipe.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE_VAR = "CRYPTOPIPE_LOG_FILE"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(settings: Settings) -> None:
    path = os.environ.get(LOG_FILE_VAR)
    if path:
        handler: logging.Handler = RotatingFileHandler(path, maxBytes=settings.log_max_bytes,
                                                       backupCount=settings.log_backups, encoding="utf-8")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # A crash's traceback belongs in the same (rotated) log, not only on the process's stdout.
    sys.excepthook = lambda *exc: logging.getLogger("crash").critical("uncaught exception", exc_info=exc)
