"""The client's channel: plaintext or TLS (mutual TLS with a client certificate), and the API key
sent with every call. Light: grpc only."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

AUTHORIZATION = "authorization"
Pem = bytes | str | Path  # PEM bytes, or the path of a PEM file


@dataclass(frozen=True)
class Tls:
    """TLS for a channel. `ca`: the certificate(s) to trust for the server (None: the system's);
    `cert` and `key`: this client's certificate and key, for a server that requires them (mTLS)."""

    ca: Pem | None = None
    cert: Pem | None = None
    key: Pem | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError(
                "a client certificate needs its key, and a key its certificate (--tls-cert, --tls-key)"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca), private_key=_pem(self.key), certificate_chain=_pem(self.cert)
        )


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from exc


def open_channel(
    target: str,
    options: Sequence[tuple[str, Any]] = (),
    *,
    api_key: str | None = None,
    tls: Tls | None = None,
) -> grpc.Channel:
    """A channel to `target`; with `api_key`, every call carries ``authorization: Bearer <key>``."""
    if tls is None:
        channel = grpc.insecure_channel(target, options=list(options))
    else:
        channel = grpc.secure_channel(target, tls.credentials(), options=list(options))
    if not api_key:
        return channel
    return grpc.intercept_channel(channel, _KeyMetadata(api_key))


class _Details(
    collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _KeyMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the key to every call's metadata, whatever its kind (streaming ingest included)."""

    def __init__(self, api_key: str) -> None:
        self._metadata = ((AUTHORIZATION, f"Bearer {api_key}"),)

    def _with_key(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = tuple(d.metadata or ()) + self._metadata
        return _Details(
            d.method,
            d.timeout,
            metadata,
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_key(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_key(details), requests)
