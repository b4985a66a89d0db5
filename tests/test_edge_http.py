"""The edge's HTTP behaviour on a real Envoy: no path skips the token check, security headers on
every response (Envoy's own replies included), the 25 MiB body limit (413 / RESOURCE_EXHAUSTED),
JSON errors for malformed input, CORS from the allowlist, health outside auth, JSON access logs
with the request id, and the admin interface on loopback only."""

from __future__ import annotations

import json
import math
import time

import grpc
import psutil
import pytest
from iceos.auth.v1 import auth_pb2, auth_pb2_grpc
from iceos.memory.v1 import memory_pb2, memory_pb2_grpc

from services.common.principal import Role
from services.common.settings import MAX_MESSAGE_BYTES
from tests.support.edge_client import request
from tests.support.processes import wait_for
from tests.support.stack import LiveStack, Tenant

SECURITY_HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff",
                    "referrer-policy": "same-origin"}
BIG = MAX_MESSAGE_BYTES + 1024 * 1024  # 26 MiB


def _secure(headers: dict[str, str]) -> bool:
    return all(headers.get(k) == v for k, v in SECURITY_HEADERS.items())


@pytest.fixture
def edge(stack: LiveStack) -> str:
    assert stack.edge is not None
    return stack.edge.address


# Paths a client might use to slip past the check: unknown, oddly encoded, upper-case, the raw
# gRPC path over HTTP/1.1. (path, status with a valid token).
ODD_PATHS = [
    ("/v1/principal", 200),
    ("//v1/principal", 200),                      # merged slashes: the same route
    ("/v1/../v1/principal", 200),                 # normalised: the same route
    ("/v1/./principal", 200),
    ("/v1/%70rincipal", 200),                     # %70 = p, decoded by normalisation
    ("/V1/PRINCIPAL", 404),
    ("/v1/projects%2Fdefault/tokens", 404),       # an escaped slash never becomes a separator
    ("/v1/projects/x%2F..%2F../tokens", 404),     # reaches ListTokens for "projects/x/../..":
                                                  # not this caller's project
    ("/nope", 404),
    ("/", 404),
    ("/admin", 404),
    ("/v1/principal%00", 404),
]


@pytest.mark.parametrize("path,with_token", ODD_PATHS)
def test_no_path_skips_the_check(edge: str, tenant: Tenant, path: str, with_token: int) -> None:
    anonymous = request(edge, "GET", path)
    assert anonymous.status in (400, 401), anonymous  # never reaches anything
    if anonymous.status == 400:  # rejected by path normalisation, before any route
        assert with_token == 404
    assert _secure(anonymous.headers)
    authed = request(edge, "GET", path, headers=tenant.headers(Role.ADMIN))
    if anonymous.status == 401:
        assert authed.status == with_token, (path, authed)
        assert _secure(authed.headers)


def _refused(reply) -> bool:  # type: ignore[no-untyped-def]
    """401 for HTTP callers; a gRPC-typed request (whatever the HTTP version) gets gRPC's own
    form: HTTP 200 with grpc-status 16 (UNAUTHENTICATED) and no body."""
    if reply.headers.get("content-type", "").startswith("application/grpc"):
        return reply.headers.get("grpc-status") == "16" and reply.body == b""
    return reply.status == 401


def test_raw_grpc_path_over_http1_without_a_token_is_refused(edge: str) -> None:
    for content_type in ("application/grpc", "application/json", "application/grpc+proto",
                         "text/plain"):
        reply = request(edge, "POST", "/iceos.auth.v1.AuthService/GetCurrentPrincipal",
                        headers={"Content-Type": content_type}, body=b"\0\0\0\0\0")
        assert _refused(reply), (content_type, reply)
    assert request(edge, "GET", "/iceos.auth.v1.AuthService/GetCurrentPrincipal").status == 401
    # Every service's gRPC prefix, the ext_authz and reflection services, and nothing at all.
    for path in ("/iceos.memory.v1.MemoryService/GetMemory",
                 "/iceos.sandbox.v1.SandboxService/Execute",
                 "/iceos.registry.v1.RegistryService/GetBlueprint",
                 "/iceos.orchestrator.v1.OrchestratorService/GetRun",
                 "/envoy.service.auth.v3.Authorization/Check",
                 "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                 "/grpc.health.v1.Health/Check"):
        for content_type in ("application/grpc", "application/json"):
            reply = request(edge, "POST", path, headers={"Content-Type": content_type},
                            body=b"")
            assert _refused(reply), (path, content_type, reply)


@pytest.mark.parametrize("path", ["/iceos.nothing.v1.Nothing/Call", "/v1/principal"])
def test_unknown_grpc_paths_need_a_token_then_are_unimplemented(stack: LiveStack,
                                                                tenant: Tenant,
                                                                path: str) -> None:
    with stack.channel() as channel:
        call = channel.unary_unary(path)
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            call(b"", metadata=tenant.md(Role.ADMIN), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert _secure(dict(info.value.trailing_metadata() or ()))


def test_security_headers_on_200_401_404_413_and_400(edge: str, tenant: Tenant) -> None:
    ok = request(edge, "GET", "/v1/principal", headers=tenant.headers(Role.VIEWER))
    unauthenticated = request(edge, "GET", "/v1/principal")
    missing = request(edge, "GET", "/v1/nope", headers=tenant.headers(Role.VIEWER))
    upstream_missing = request(edge, "GET", f"/v1/{tenant.parent}/memories/nope",
                               headers=tenant.headers(Role.VIEWER))
    too_big = request(edge, "POST", f"/v1/{tenant.parent}/memories",
                      body=b'{"content": "' + b"x" * BIG + b'"}',
                      headers={**tenant.headers(Role.EDITOR),
                               "Content-Type": "application/json"})
    malformed = request(edge, "POST", f"/v1/{tenant.parent}/memories", body=b'{"content": ',
                        headers={**tenant.headers(Role.EDITOR),
                                 "Content-Type": "application/json"})
    health = request(edge, "GET", "/healthz")
    replies = {200: ok, 401: unauthenticated, 404: missing, 413: too_big, 400: malformed}
    for status, reply in replies.items():
        assert reply.status == status, (status, reply.status, reply.body[:300])
        assert _secure(reply.headers), (status, reply.headers)
        assert reply.headers.get("x-request-id")
    assert upstream_missing.status == 404 and _secure(upstream_missing.headers)
    assert health.status == 200 and _secure(health.headers)
    # Envoy's own errors are JSON google.rpc.Status, like the services' transcoded ones.
    for status, code, reason in ((404, 5, "NO_ROUTE"), (413, 8, "BODY_TOO_LARGE"),
                                 (400, 3, "BAD_REQUEST")):
        body = replies[status].json()
        assert body["code"] == code and body["details"][0]["reason"] == reason, body
        assert body["details"][0]["metadata"]["request_id"] == replies[status].headers[
            "x-request-id"]
    assert "not found" in upstream_missing.json()["message"]


def test_body_limit_over_grpc_through_the_edge_and_directly(stack: LiveStack,
                                                            tenant: Tenant) -> None:
    big = memory_pb2.CreateMemoryRequest(parent=tenant.parent,
                                         memory=memory_pb2.Memory(content="x" * BIG))
    assert stack.edge is not None
    for name, target in (("edge", stack.edge.address),
                         ("orchestrator", stack.address("orchestrator"))):
        # A connection of its own: the refused upload must not share flow control with others.
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) \
                as channel:
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.CreateMemory(big, metadata=tenant.md(Role.EDITOR), timeout=60)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, \
                (name, info.value.code(), info.value.details())
    # Just under the limit passes the edge (the service then judges the content itself).
    fits = memory_pb2.CreateMemoryRequest(
        parent=tenant.parent, memory=memory_pb2.Memory(content="x" * (MAX_MESSAGE_BYTES - 4096)))
    with stack.channel() as channel:
        with pytest.raises(grpc.RpcError) as info:
            memory_pb2_grpc.MemoryServiceStub(channel).CreateMemory(
                fits, metadata=tenant.md(Role.EDITOR), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # content too long


def test_unknown_query_parameters_and_methods_are_rejected(edge: str, tenant: Tenant) -> None:
    reply = request(edge, "GET", "/v1/principal?evil=1", headers=tenant.headers(Role.VIEWER))
    assert reply.status == 400 and _secure(reply.headers)
    reply = request(edge, "DELETE", "/v1/principal", headers=tenant.headers(Role.ADMIN))
    assert reply.status == 404


def test_cors_preflight_allowed_and_refused(edge: str) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = request(edge, "OPTIONS", "/v1/principal",
                      headers={"Origin": "http://localhost:3000", **preflight})
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    assert _secure(allowed.headers)
    refused = request(edge, "OPTIONS", "/v1/principal",
                      headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
    assert _secure(refused.headers)


def test_cors_origins_come_from_the_allowlist(stack: LiveStack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.stack import Edge
    assert stack.edge is not None
    edge = Edge(stack.edge.upstreams, tmp_path,
                options={"cors_origins": ("https://app.example.com",)}).start()
    try:
        def preflight(origin: str) -> dict[str, str]:
            return request(edge.address, "OPTIONS", "/v1/principal", headers={
                "Origin": origin, "Access-Control-Request-Method": "GET"}).headers
        assert preflight("https://app.example.com")["access-control-allow-origin"] == \
            "https://app.example.com"
        assert "access-control-allow-origin" not in preflight("http://localhost:3000")
    finally:
        edge.stop()


def test_health_needs_no_token_and_access_logs_are_json_with_the_request_id(
        stack: LiveStack, edge: str, tenant: Tenant) -> None:
    assert request(edge, "GET", "/healthz").status == 200
    assert request(edge, "GET", "/readyz").status == 200
    for _ in range(3):  # the first call asks ext_authz, the others hit the verdict cache
        reply = request(edge, "GET", "/v1/principal", headers=tenant.headers(Role.VIEWER))
    request_id = reply.headers["x-request-id"]
    assert stack.edge is not None
    log = stack.edge.workdir / f"envoy-{stack.edge.port}.log"

    def logged() -> dict | None:  # type: ignore[type-arg]
        for line in log.read_text(errors="replace").splitlines():
            if request_id in line and line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]
        return None

    entry = wait_for(logged, 15, interval=0.2, what="the access log line")
    assert entry["path"] == "/v1/principal" and entry["status"] == 200
    assert entry["upstream"] == "registry" and entry["request_id"] == request_id
    assert entry["token"].startswith(f"{tenant.parent}/tokens/")  # who, never the secret
    assert tenant.tokens[Role.VIEWER] not in log.read_text(errors="replace")


def test_admin_interface_listens_on_loopback_only(stack: LiveStack) -> None:
    assert stack.edge is not None and stack.edge.proc is not None
    listening = [c.laddr for c in psutil.Process(stack.edge.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    admin = [a for a in listening if a.port == stack.edge.admin_port]
    assert admin and all(a.ip == "127.0.0.1" for a in admin)


def test_the_edge_forwards_the_token_unchanged(stack: LiveStack, tenant: Tenant) -> None:
    with stack.channel() as channel:
        who = auth_pb2_grpc.AuthServiceStub(channel).GetCurrentPrincipal(
            auth_pb2.GetCurrentPrincipalRequest(), metadata=tenant.md(Role.EDITOR))
    assert who.project == tenant.parent and who.role == Role.EDITOR


def _ext_authz_checks(edge) -> int:  # type: ignore[no-untyped-def]
    stats = request(f"127.0.0.1:{edge.admin_port}", "GET",
                    "/stats?filter=^http\\.edge\\.ext_authz\\.(ok|denied)$").body.decode()
    return sum(int(line.rsplit(":", 1)[1]) for line in stats.splitlines() if ":" in line)


def test_the_verdict_cache_skips_the_check_for_a_hot_token(stack: LiveStack, tenant: Tenant,  # type: ignore[no-untyped-def]
                                                          tmp_path) -> None:
    from tests.support.stack import Edge
    assert stack.edge is not None
    cached = Edge(stack.edge.upstreams, tmp_path / "cached").start()
    uncached = Edge(stack.edge.upstreams, tmp_path / "uncached",
                    options={"rate_limit_rps": 100_000, "auth_cache_ms": 0}).start()
    try:
        for edge in (cached, uncached):
            before, started = _ext_authz_checks(edge), time.monotonic()
            for _ in range(10):
                assert request(edge.address, "GET", "/v1/principal",
                               headers=tenant.headers(Role.VIEWER)).status == 200
                # Denials are never cached: each one asks the registry.
                assert request(edge.address, "GET", "/v1/principal",
                               headers={"Authorization": "Bearer ice_" + "x" * 43}).status == 401
            checks = _ext_authz_checks(edge) - before
            if edge is cached:
                # One Check per Envoy worker per cache lifetime (2 s) for the valid token.
                lifetimes = math.ceil((time.monotonic() - started) / 2) + 1
                assert 10 < checks <= 10 + 2 * lifetimes, checks
            else:
                assert checks == 20, checks
    finally:
        cached.stop()
        uncached.stop()
