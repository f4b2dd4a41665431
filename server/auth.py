"""API keys on every call, TLS on the socket, and the rule that keeps a server from being open.

`AuthInterceptor` checks the key each call presents (metadata ``authorization: Bearer <key>`` or
``x-api-key``) against the keys file, checks the scope the method needs, and makes the key's
principal the call's (server.context.principal_var), whatever the handler kind, unary or
streaming. Health checks and reflection stay open so load balancers and tools work without a key.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from server.config import ServerConfig
from server.context import Principal, principal_var
from server.keys import ApiKey, KeyFileError, KeyStore, Scope

log = logging.getLogger("mmsearch.auth")

SERVICE = "/mmsearch.v1.SearchService/"
_READ = ("Search", "Recommend", "Embed", "Get", "Stats", "MineHardNegatives")
_WRITE = ("Upsert", "Delete", "Ingest", "WritePoints")
_ADMIN = ("Reindex",)  # rebuilds every tenant's points: an operator's call
# The scope each method needs. A SearchService method not listed needs admin: a new RPC is
# closed until someone decides who may call it.
METHOD_SCOPES: dict[str, Scope] = (
    {SERVICE + m: Scope.READ for m in _READ}
    | {SERVICE + m: Scope.WRITE for m in _WRITE}
    | {SERVICE + m: Scope.ADMIN for m in _ADMIN}
)
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
AUTHORIZATION = "authorization"
API_KEY = "x-api-key"


class ExposureError(ValueError):
    """The server's settings would expose it without protection, or are inconsistent."""


def required_scope(method: str) -> Scope | None:
    """The scope a method needs; None for the open services."""
    if method.startswith(OPEN_SERVICES):
        return None
    return METHOD_SCOPES.get(method, Scope.ADMIN)


def presented_key(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for name, value in metadata or ():
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if name == AUTHORIZATION:
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == API_KEY and text.strip():
            return text.strip()
    return None


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        scope = required_scope(details.method)
        if handler is None or scope is None:
            return handler  # an unknown method stays UNIMPLEMENTED; open services pass
        code, message, record = self._check(details, scope)
        if record is None:
            return _refusing(handler, code, message)
        principal = Principal(
            record.id, record.tenant, frozenset(s.value for s in record.scopes), record.name
        )
        return _as_principal(handler, principal)

    def _check(
        self, details: grpc.HandlerCallDetails, scope: Scope
    ) -> tuple[grpc.StatusCode, str, ApiKey | None]:
        key = presented_key(details.invocation_metadata)
        method = details.method.rsplit("/", 1)[-1]
        if key is None:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs an API key: send metadata 'authorization: Bearer <key>' "
                "(MMSEARCH_API_KEY for the CLI)",
                None,
            )
        try:
            record = self.keys.verify(key)
        except KeyFileError as exc:  # fail closed: a key the server cannot check is not accepted
            log.error("cannot check API keys: %s", exc)
            return grpc.StatusCode.UNAVAILABLE, "the server cannot read its keys file; try again later", None
        if record is None:
            # One answer for unknown, malformed and revoked keys: nothing to learn by guessing.
            return grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid (unknown or revoked)", None
        if not record.allows(scope):
            held = ", ".join(s.value for s in record.scopes)
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs the {scope.value} scope; key {record.id} has {held}",
                None,
            )
        return grpc.StatusCode.OK, "", record


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers `code` without running it."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Logged here, inside the call, so the line carries the request id (server.logs).
        log.info("refused %s: %s", code.name, message)
        await context.abort(code, message)

    return rewrap_handler(handler, lambda _behavior, _streams: refuse)


def _as_principal(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    """`handler`, run with `principal` as the call's principal."""

    def bind(behavior: Callable[..., Any], streams: bool) -> Callable[..., Any]:
        if streams and inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                principal_var.set(principal)
                async for response in behavior(request, context):
                    yield response

            return stream

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            principal_var.set(principal)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

        return call

    return rewrap_handler(handler, bind)


def rewrap_handler(
    handler: grpc.RpcMethodHandler, bind: Callable[[Callable[..., Any], bool], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """A handler of the same kind (unary or streaming, either side) whose behavior is
    ``bind(behavior, response_streams)``: how every interceptor here wraps all four kinds."""
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, False),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, True),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, False),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, True),
    )
    for behavior, make, streams in kinds:
        if behavior is not None:
            return make(
                bind(behavior, streams),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise ValueError("a method handler with no behavior")


# -- exposure and TLS -----------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine. Names other than localhost
    count as exposed: what they resolve to can change."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServerConfig, *, warn: bool = True) -> KeyStore | None:
    """Refuse settings that would open the server to the network without keys (unless told
    `insecure`) or that are inconsistent; the keys store to check calls against, if any. With
    `warn`, log what is allowed but risky."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ExposureError("TLS needs both --tls-cert and --tls-key (MMSEARCH_TLS_CERT, MMSEARCH_TLS_KEY)")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ExposureError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key as well")
    exposed = not is_loopback(config.host)
    if config.keys_file is None:
        if exposed and not config.insecure:
            raise ExposureError(
                f"refusing to serve on {config.host} without API keys: anyone who can reach the "
                "port could read and change the index. Create a key (`mmsearch keys create "
                "--keys-file FILE --tenant NAME --scopes read,write`) and pass --keys-file FILE, "
                "bind 127.0.0.1, or pass --insecure (MMSEARCH_INSECURE=1) to serve open anyway"
            )
        if exposed and warn:
            log.warning(
                "serving on %s WITHOUT API keys (--insecure): every caller has every scope", config.host
            )
        return None
    keys = KeyStore(config.keys_file)
    active = keys.check()  # raises KeyFileError (missing, malformed) before the server starts
    if not warn:
        return keys
    if active == 0:
        log.warning("keys file %s has no active key: every call will be refused", config.keys_file)
    if keys.insecure_mode():
        log.warning("keys file %s is readable or writable by others; chmod 600 it", config.keys_file)
    if exposed and config.tls_cert is None:
        log.warning(
            "serving API keys over plaintext on %s: use --tls-cert/--tls-key, or TLS at a load balancer",
            config.host,
        )
    return keys


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the port, or None for plaintext. With a client CA, every client
    must present a certificate it signed (mutual TLS)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        chain = config.tls_cert.read_bytes()
        key = config.tls_key.read_bytes()
        client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca is not None else None
    except OSError as exc:
        raise ExposureError(f"cannot read a TLS file: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
