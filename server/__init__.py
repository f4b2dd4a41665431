"""The gRPC service: query planning, request validation, the grpc.aio server."""
