"""Log lines that name their call: every record is stamped with the current call's request id
and tenant, and written as text or as one JSON object per line, by a thread of its own so that a
slow log sink never stalls the event loop."""

from __future__ import annotations

import json
import logging
import queue
import time
from logging.handlers import QueueHandler, QueueListener
from typing import Any

from server.context import current_principal, request_id_var

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
LOG_FORMATS = ("text", "json")
# Records waiting for the writer thread; past this many (a sink that cannot keep up), new records
# are dropped and counted rather than held in memory or allowed to block the server.
LOG_QUEUE_RECORDS = 10_000
# What every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Stamped once, where the record is made: behind the queue, the writer thread has no call.
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
            record.tenant = current_principal().tenant
        return True


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in the message: text a client sent (a filter key with a
    newline, say) must not forge a log line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return line if line.isprintable() else "".join(_escape(ch) for ch in line)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id, tenant, and the
    record's `extra=` fields (the access log's method, code and ms). json.dumps escapes every
    control character, so no client text can break a line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "tenant": getattr(record, "tenant", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _escape(ch: str) -> str:
    return ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")


def install_request_ids(
    logger: logging.Logger | None = None, *, log_format: str = "text", background: bool = False
) -> QueueListener | None:
    """Stamp every record of `logger`'s handlers (default: the root logger's) with the request
    id and tenant, and format them as `log_format` ("text" or "json"). Idempotent; called once
    by the server at start, never at import.

    With `background`, the handlers move behind a bounded queue and a writer thread (the server:
    a log write blocked on a full pipe must not hold up every call); the returned listener's
    stop() writes what is queued and ends the thread."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    target = logger or logging.getLogger()
    formatter = JsonFormatter() if log_format == "json" else EscapingFormatter(FORMAT)
    handlers = [h for h in target.handlers if not isinstance(h, DroppingQueueHandler)]
    for handler in handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
        handler.setFormatter(formatter)
    if not background or not handlers:
        return None
    records: queue.Queue[logging.LogRecord] = queue.Queue(LOG_QUEUE_RECORDS)
    front = DroppingQueueHandler(records)
    front.addFilter(RequestIdFilter())  # in the calling thread: the call's context is there
    for handler in handlers:
        target.removeHandler(handler)
    target.addHandler(front)
    listener = QueueListener(records, *handlers, respect_handler_level=True)
    listener.start()
    return listener


class DroppingQueueHandler(QueueHandler):
    """Hands records to the writer thread; drops them (counted) when its queue is full."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
