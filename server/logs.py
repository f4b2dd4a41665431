"""Request ids in log lines: a logging filter that stamps every record with the current call's id."""

from __future__ import annotations

import logging

from server.context import request_id_var

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in the message: text a client sent (a filter key with a
    newline, say) must not forge a log line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return line if line.isprintable() else "".join(_escape(ch) for ch in line)


def _escape(ch: str) -> str:
    return ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")


def install_request_ids(logger: logging.Logger | None = None) -> None:
    """Stamp and show the request id on every handler of `logger` (default: the root logger).
    Idempotent; called once by the server at start, never at import."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
            handler.setFormatter(EscapingFormatter(FORMAT))
