"""Request ids in log lines: a logging filter that stamps every record with the current call's id."""

from __future__ import annotations

import logging

from server.context import request_id_var

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def install_request_ids(logger: logging.Logger | None = None) -> None:
    """Stamp and show the request id on every handler of `logger` (default: the root logger).
    Idempotent; called once by the server at start, never at import."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
            handler.setFormatter(logging.Formatter(FORMAT))
