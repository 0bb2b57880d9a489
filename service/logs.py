"""Logging: one JSON object per line on stderr for the ``convserve`` loggers."""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            document.update(fields)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (gunicorn's, or pytest's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the ``convserve`` loggers at ``level``; idempotent, so several
    apps in one process share one handler."""
    root = logging.getLogger("convserve")
    root.setLevel(level.upper())
    if not any(isinstance(handler, StderrHandler) for handler in root.handlers):
        handler = StderrHandler()
        handler.setFormatter(JsonLogFormatter())
        root.addHandler(handler)
