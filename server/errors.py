"""Request errors with the gRPC status they map to. Messages name the field and the problem."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RequestError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RequestError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(RequestError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RequestError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(RequestError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(RequestError):
    code = grpc.StatusCode.CANCELLED


class Unavailable(RequestError):
    code = grpc.StatusCode.UNAVAILABLE
