"""iceos-client: the channel factory adds the Bearer token; without it calls are refused."""

from __future__ import annotations

import grpc
import pytest
from iceos.auth.v1 import access_pb2, auth_pb2

from iceos_client import connect
from services.common.principal import Role


def test_connect_adds_the_token_through_the_edge(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with connect(stack.edge.address, token=tenant.tokens[Role.VIEWER]) as ice:
        principal = ice.auth.GetCurrentPrincipal(auth_pb2.GetCurrentPrincipalRequest())
    assert principal.project == tenant.parent
    assert principal.role == access_pb2.ROLE_VIEWER


def test_a_wrong_token_is_unauthenticated(stack) -> None:  # type: ignore[no-untyped-def]
    with connect(stack.address("registry"), token="ice_" + "x" * 43) as ice:
        with pytest.raises(grpc.RpcError) as info:
            ice.auth.GetCurrentPrincipal(auth_pb2.GetCurrentPrincipalRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_connect_requires_a_token(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("ICEOS_TOKEN", raising=False)
    with pytest.raises(ValueError, match="no token"):
        connect("localhost:1")
