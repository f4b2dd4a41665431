"""The request context: who is calling and until when, handed explicitly to every service.

The servicer builds one per call; nothing below it reads gRPC objects. Long steps call
:meth:`RequestContext.check` between stages, so a call whose deadline passed or whose client went
away stops there instead of finishing work nobody will read.
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from dataclasses import dataclass, field

from server.errors import Cancelled, DeadlineExceeded

DEFAULT_TENANT = "default"
# The current call's request id, for log lines (see server.logs). Set by the interceptor;
# asyncio.to_thread copies it into the worker thread that runs the call.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("mmsearch_request_id", default="-")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key's id, tenant and scopes (server.keys.Scope values)."""

    key_id: str  # "" on a server without keys
    tenant: str
    scopes: frozenset[str]
    name: str = ""  # the key's label, for logs


# What every call runs as on a server without keys (open, which only a loopback bind allows).
OPEN_PRINCIPAL = Principal(key_id="", tenant=DEFAULT_TENANT, scopes=frozenset({"read", "write", "admin"}))
# The current call's principal, set by server.auth.AuthInterceptor after checking its key;
# the servicer reads it once, into RequestContext.tenant.
principal_var: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "mmsearch_principal", default=OPEN_PRINCIPAL
)


def current_principal() -> Principal:
    return principal_var.get()


@dataclass
class RequestContext:
    tenant: str = DEFAULT_TENANT
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    deadline: float | None = None  # time.monotonic() by which the answer must be sent
    method: str = ""
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def with_timeout(
        cls, seconds: float | None, *, request_id: str, method: str, tenant: str = DEFAULT_TENANT
    ) -> RequestContext:
        deadline = None if seconds is None else time.monotonic() + seconds
        return cls(tenant=tenant, request_id=request_id, deadline=deadline, method=method)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (negative once passed), or None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check(self) -> None:
        """Raise DeadlineExceeded or Cancelled when the call should stop working."""
        if self._cancelled.is_set():
            raise Cancelled(f"{self.method or 'call'} was cancelled by the client")
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded(
                f"{self.method or 'call'} passed its deadline; the work was stopped "
                "(send a longer deadline, fewer inputs or a smaller top_k)"
            )


def background() -> RequestContext:
    """A context for work no client waits on (CLI local mode, tests): no deadline."""
    return RequestContext(method="local")
