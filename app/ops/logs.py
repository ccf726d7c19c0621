"""``CATDOG_LOG_FORMAT=json``: every log line as one JSON object, with the request id.

The formatter is python-json-logger's ``JsonFormatter``, on one handler of the root
logger that the service's and uvicorn's loggers all propagate to, so uvicorn's own
lines come out as JSON too (``python -m app`` gives uvicorn no logging
configuration of its own in this mode; under another launcher the lifespan takes
the loggers back at startup). The access line of each request is written by the
REST middleware and the gRPC interceptor (``access``), with the request id, route,
status, duration, model version and label; uvicorn's plain access line is then
switched off. A line logged for a request's failure names its id too (``extra``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from app.core.observe import RequestContext

LOGGERS = ("", "catdog", "uvicorn", "uvicorn.error", "uvicorn.access")
FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
DATES = "%Y-%m-%dT%H:%M:%S%z"
access_log = logging.getLogger("catdog.access")


def configure_json() -> None:
    """Send every log line, uvicorn's included, through one JSON handler on the root
    logger (idempotent: run at import and again at startup, after a launcher's own
    logging configuration)."""
    handler = logging.StreamHandler(sys.stderr)
    names = {"asctime": "time", "levelname": "level", "name": "logger"}
    handler.setFormatter(JsonFormatter(FIELDS, rename_fields=names, datefmt=DATES))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for name in LOGGERS[1:]:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    # The middleware writes the access line, with more in it than uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True


def access(context: RequestContext, method: str, status: int | str, seconds: float) -> None:
    """One access line for a finished request (REST or gRPC)."""
    fields: dict[str, Any] = {
        "request_id": context.request_id,
        "protocol": context.protocol,
        "method": method,
        "route": context.route,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "model_version": context.model_version,
        "label": context.labels[0] if len(context.labels) == 1 else context.labels or None,
    }
    if context.key_id is not None:
        fields["key_id"] = context.key_id
    access_log.info("%s %s %s", method, context.route, status, extra=fields)
