"""Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`), served by the
registry: the edge asks it about every request before routing.

The edge check is authentication only: is the Bearer token well formed, known, unexpired and not
revoked. Roles and project scoping are each service's own check on the call itself (the edge is
not the only lock). On success the request goes on unchanged; on failure the edge answers 401 with
a short reason (UNAUTHENTICATED to gRPC callers). Verdicts come from the shared Authenticator, so a
hot token costs a dictionary lookup, and a revoked token stops passing within its cache bound.
The edge itself reuses an answer for at most what is left of that cache entry.
"""

from __future__ import annotations

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from services.common import errors, tokens
from services.common.auth import Authenticator, Verdict, parse_bearer

# Dynamic metadata (namespace envoy.filters.http.ext_authz) on an allowed request: which token
# made the call, for the access log (never the secret), and how long the edge's verdict cache
# (envoy/edge.lua) may reuse the answer.
_TOKEN_KEY = "token"
_CACHE_KEY = "cache_ms"


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value))


def allowed(verdict: Verdict) -> external_auth_pb2.CheckResponse:
    metadata = struct_pb2.Struct()
    metadata[_TOKEN_KEY] = verdict.principal.token_name
    metadata[_CACHE_KEY] = int(verdict.reusable_s * 1000)
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(),
        dynamic_metadata=metadata)


def denied(exc: errors.Unauthenticated) -> external_auth_pb2.CheckResponse:
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=exc.message),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            headers=[
                _header("www-authenticate",
                        f'Bearer realm="iceos", error="invalid_token", '
                        f'error_description="{exc.message}"'),
                # Read by the edge's local-reply mapper to fill ErrorInfo.reason in JSON errors.
                _header("x-iceos-reason", exc.reason),
            ],
            body=exc.message))


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext) -> external_auth_pb2.CheckResponse:
        authorization = request.attributes.request.http.headers.get("authorization")
        try:
            # Callers from outside present API tokens (ice_…) only; credentials meant for calls
            # between services never pass the edge.
            if not tokens.well_formed(parse_bearer(authorization)):
                raise errors.Unauthenticated("only iceOS API tokens (ice_…) are accepted here",
                                             reason="TOKEN_MALFORMED")
            verdict = await self.authenticator.verify(authorization)
        except errors.Unauthenticated as exc:
            return denied(exc)
        # errors.Unavailable (no database) propagates: the interceptor answers UNAVAILABLE and
        # the edge fails closed with 503.
        return allowed(verdict)
