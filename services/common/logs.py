"""The one logger setup: JSON lines on stderr, with whatever ``extra`` a call site passed."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# The id of the HTTP request being served, if any: every log line written while serving it carries it.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# kopf's per-object logger passes its whole OperatorSettings (a ~2 KB dump per line) and a posting flag as
# ``extra``; like kopf's own JSON formatter, keep only the object reference, under "object".
_KOPF_INTERNALS = {"settings", "k8s_skip", "k8s_ref"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if (request_id := REQUEST_ID.get()) is not None:
            entry["request_id"] = request_id
        extras = vars(record)
        if isinstance(reference := extras.get("k8s_ref"), dict):
            entry["object"] = {k: v for k, v in reference.items() if v is not None}
        entry.update({k: v for k, v in extras.items() if k not in _STANDARD and k not in _KOPF_INTERNALS})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log record of the process to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if level.upper() in logging.getLevelNamesMapping() else "INFO")
    # httpx logs every request at INFO with its URL: one line per outgoing webhook, and an endpoint URL
    # may carry a token (hooks.example.com/T0/B0/secret) that must not reach the logs.
    for noisy in ("aiokafka", "kafka", "psycopg.pool", "mail.log", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
