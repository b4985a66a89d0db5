"""Channel factory: every call carries `authorization: Bearer <token>`."""

from __future__ import annotations

import os
from types import TracebackType

import grpc
from iceos.auth.v1 import auth_pb2_grpc
from iceos.memory.v1 import memory_pb2_grpc
from iceos.orchestrator.v1 import orchestrator_pb2_grpc
from iceos.registry.v1 import registry_pb2_grpc
from iceos.sandbox.v1 import sandbox_pb2_grpc

# Matches the edge's body limit.
MAX_MESSAGE_BYTES = 25 * 1024 * 1024


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):  # type: ignore[no-untyped-def]
        metadata = [m for m in (details.metadata or []) if m[0] != "authorization"]
        metadata.append(self._header)
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)


def bearer_interceptor(token: str) -> _Bearer:
    return _Bearer(token)


class Client:
    """The stubs of every iceOS service over one authenticated channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.registry = registry_pb2_grpc.RegistryServiceStub(channel)
        self.orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)
        self.sandbox = sandbox_pb2_grpc.SandboxServiceStub(channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def connect(target: str | None = None, token: str | None = None, *,
            secure: bool = False) -> Client:
    """Connect to `target` (default $ICEOS_ADDRESS or localhost:8080) with `token`
    (default $ICEOS_TOKEN). Plaintext by default (the local edge); `secure=True` uses TLS."""
    target = target or os.environ.get("ICEOS_ADDRESS", "localhost:8080")
    token = token or os.environ.get("ICEOS_TOKEN")
    if not token:
        raise ValueError("no token: pass token= or set ICEOS_TOKEN")
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
               if secure else grpc.insecure_channel(target, options=options))
    return Client(grpc.intercept_channel(channel, bearer_interceptor(token)))
