"""Local rate limiting on an edge of its own with a low limit (the shared test edge is generous):
429 with a JSON error to JSON callers, RESOURCE_EXHAUSTED (not UNAVAILABLE) to gRPC callers,
health checks never limited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from iceos.auth.v1 import auth_pb2, auth_pb2_grpc

from services.common.principal import Role
from tests.support.edge_client import request
from tests.support.stack import Edge, LiveStack, Tenant


@pytest.fixture
def limited_edge(stack: LiveStack, tmp_path: Path) -> Iterator[Edge]:
    assert stack.edge is not None
    edge = Edge(stack.edge.upstreams, tmp_path,
                options={"rate_limit_rps": 1, "rate_limit_burst": 3}).start()
    yield edge
    edge.stop()


def test_rate_limit_answers_429_to_json_and_resource_exhausted_to_grpc(
        limited_edge: Edge, tenant: Tenant) -> None:
    statuses = []
    for _ in range(20):
        reply = request(limited_edge.address, "GET", "/v1/principal",
                        headers=tenant.headers(Role.VIEWER))
        statuses.append(reply.status)
        if reply.status == 429:
            break
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    assert reply.json()["code"] == 8
    assert reply.json()["details"][0]["reason"] == "RATE_LIMITED"
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["x-frame-options"] == "DENY"
    # Health and readiness stay outside the limit.
    assert request(limited_edge.address, "GET", "/healthz").status == 200
    assert request(limited_edge.address, "GET", "/readyz").status == 200

    codes = []
    with grpc.insecure_channel(limited_edge.address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for _ in range(20):
            try:
                stub.GetCurrentPrincipal(auth_pb2.GetCurrentPrincipalRequest(),
                                         metadata=tenant.md(Role.VIEWER), timeout=30)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes
    assert grpc.StatusCode.UNAVAILABLE not in codes
