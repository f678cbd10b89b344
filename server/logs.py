"""Logging setup and the request context every log line and event may carry.

``BRONZE_LOG_FORMAT=text`` (the default) keeps the human ``time level logger message`` lines;
``json`` writes one JSON object per line with the fields a log pipeline indexes:
``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``machine``, ``operation``,
``request_id`` (each ``null`` when unknown), plus ``exception`` when there is one.

Where the context comes from:
- ``request_id``: :data:`REQUEST_ID`, set per HTTP request by the middleware in
  :mod:`server.metrics` (``X-Request-ID`` from the client when it is sane, else a new one;
  echoed in the response). Tasks started during a request (a power operation's runner) inherit
  it, because asyncio copies context variables into new tasks and threads of
  ``run_in_threadpool``; :func:`server.inventory.machines.record` stores it in each event's data.
- ``machine`` / ``operation``: :data:`MACHINE` / :data:`OPERATION` when a code path set them,
  else the ``machine=`` / ``op=`` / ``operation=`` key of the message (the codebase's key=value
  convention, docs/architecture.md), else ``extra={"machine": ...}``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bronze_request_id", default=None
)
MACHINE: contextvars.ContextVar[str | None] = contextvars.ContextVar("bronze_machine", default=None)
OPERATION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bronze_operation", default=None
)

_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MACHINE_KEY = re.compile(r"(?:^|\s)machine=(\S+)")
_OPERATION_KEY = re.compile(r"(?:^|\s)(?:op|operation)=(\S+)")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def sane_request_id(value: str | None) -> str | None:
    """A client's ``X-Request-ID`` when it is safe to log and store (1-128 of ``[A-Za-z0-9._:-]``:
    no spaces, quotes or control characters), else None (the server makes its own)."""
    if value and _REQUEST_ID_OK.fullmatch(value):
        return value
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, one line per object (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            "machine": _field(record, "machine", MACHINE, _MACHINE_KEY, message),
            "operation": _field(record, "operation", OPERATION, _OPERATION_KEY, message),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _field(
    record: logging.LogRecord,
    name: str,
    var: contextvars.ContextVar[str | None],
    pattern: re.Pattern[str],
    message: str,
) -> str | None:
    explicit = getattr(record, name, None)
    if explicit is not None:
        return str(explicit)
    value = var.get()
    if value is not None:
        return value
    m = pattern.search(message)
    return m.group(1) if m else None


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger once for ``bronze serve`` (``fmt``: ``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def uvicorn_log_config(fmt: str) -> dict[str, Any] | None:
    """uvicorn's own loggers through the root handler (so they are JSON too), or None for
    uvicorn's defaults in text mode."""
    if fmt != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }
