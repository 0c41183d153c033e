"""Structured JSON logs. Log lines carry ids, codes and timings; never request or answer text.

The request id of a line is the call's (``custos.flows.context.CallIds``): the id of the call's audit record,
the one in its error message and ``x-request-id`` trailer. A line may name it itself in its fields (lines
formatted away from the call's context); otherwise the call bound to the logging context supplies it, with
the call's OpenTelemetry ``trace_id`` when tracing is on.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from custos.flows.context import current_call

# Extra fields a log call may attach (``logger.info("...", extra={"fields": {...}})``).
_FIELDS = "fields"


class JsonFormatter(logging.Formatter):
    """One JSON object per line with time, level, logger, message, request id and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record; exception text is reduced to its type so no user data leaks through it."""
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call = current_call()
        if call is not None:
            entry["request_id"] = call.request_id
            if call.trace_id is not None:
                entry["trace_id"] = call.trace_id
        fields = getattr(record, _FIELDS, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
            tb = record.exc_info[2]
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                entry["error_at"] = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Send the root logger to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
