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


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str = "json") -> None:
    """Lines on stderr for the ``convserve`` loggers at ``level``: one JSON object each
    (``log_format="json"``, the default) or plain text; idempotent, so several apps in one
    process share one handler."""
    root = logging.getLogger("convserve")
    root.setLevel(level.upper())
    handler = next((h for h in root.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        root.addHandler(handler)
    handler.setFormatter(
        JsonLogFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
