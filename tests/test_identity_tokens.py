"""AuthService tokens on the real registry process: mint (secret once), list (paginated, page
tokens tamper-checked), get, revoke, and the role rules: only admins mint or revoke, never a role
above their own, and never in another tenant's project."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import timestamp_pb2
from iceos.auth.v1 import access_pb2, auth_pb2, auth_pb2_grpc

from services.common.principal import Role
from tests.conftest import db_execute
from tests.support.errors import violations
from tests.support.processes import wait_for
from tests.support.stack import LiveStack, Tenant


@pytest.fixture
def auth(stack: LiveStack) -> Iterator[auth_pb2_grpc.AuthServiceStub]:
    with stack.channel("registry") as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


def _error(call, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def _violated_fields(error: grpc.RpcError) -> list[str]:
    return [field for field, _ in violations(error)]


def _mint(auth: auth_pb2_grpc.AuthServiceStub, tenant: Tenant, role: int = access_pb2.ROLE_VIEWER,
          **token: object) -> auth_pb2.Token:
    return auth.CreateToken(auth_pb2.CreateTokenRequest(
        parent=tenant.parent, token=auth_pb2.Token(role=role, **token)),  # type: ignore[arg-type]
        metadata=tenant.md(Role.ADMIN))


def test_minted_secret_is_shown_once_and_works(auth, stack: LiveStack, tenant: Tenant) -> None:  # type: ignore[no-untyped-def]
    token = _mint(auth, tenant, access_pb2.ROLE_EDITOR, display_name="ci")
    assert token.secret.startswith("ice_") and token.prefix == token.secret[:12]
    assert token.name.startswith(f"{tenant.parent}/tokens/tok-")
    assert token.role == access_pb2.ROLE_EDITOR and token.display_name == "ci"
    assert token.creator.startswith(f"{tenant.parent}/tokens/")
    who = auth.GetCurrentPrincipal(auth_pb2.GetCurrentPrincipalRequest(),
                                   metadata=[("authorization", f"Bearer {token.secret}")])
    assert who.token == token.name and who.role == access_pb2.ROLE_EDITOR
    assert who.project == tenant.parent

    again = auth.GetToken(auth_pb2.GetTokenRequest(name=token.name),
                          metadata=tenant.md(Role.ADMIN))
    assert again.secret == "" and again.prefix == token.prefix
    listed = auth.ListTokens(auth_pb2.ListTokensRequest(parent=tenant.parent),
                             metadata=tenant.md(Role.ADMIN))
    assert token.name in [t.name for t in listed.tokens]
    assert all(t.secret == "" for t in listed.tokens)
    # Only the hash is stored.
    stored = db_execute(stack.database_url, "SELECT * FROM api_tokens WHERE id = %s",
                        (token.name.rsplit("/", 1)[1],))[0]
    assert token.secret.encode() not in bytes(stored["secret_sha256"])
    assert token.secret not in str(stored)


def test_create_token_validates_every_field(auth, tenant: Tenant) -> None:  # type: ignore[no-untyped-def]
    past = timestamp_pb2.Timestamp(seconds=int(time.time()) - 60)
    error = _error(auth.CreateToken, auth_pb2.CreateTokenRequest(
        parent=tenant.parent, token=auth_pb2.Token(display_name="x" * 201, expire_time=past)),
        metadata=tenant.md(Role.ADMIN))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violated_fields(error)) == {"token.role", "token.display_name", "token.expire_time"}
    error = _error(auth.CreateToken, auth_pb2.CreateTokenRequest(
        parent="projects", token=auth_pb2.Token(role=access_pb2.ROLE_VIEWER)),
        metadata=tenant.md(Role.ADMIN))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and _violated_fields(error) == ["parent"]


def test_only_admins_mint_and_never_above_their_role(auth, tenant: Tenant) -> None:  # type: ignore[no-untyped-def]
    request = auth_pb2.CreateTokenRequest(parent=tenant.parent,
                                          token=auth_pb2.Token(role=access_pb2.ROLE_VIEWER))
    for role in (Role.VIEWER, Role.EDITOR):
        error = _error(auth.CreateToken, request, metadata=tenant.md(role))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, role
        assert "admin" in error.details()
    # A role beyond the top one is above every caller's own.
    error = _error(auth.CreateToken, auth_pb2.CreateTokenRequest(
        parent=tenant.parent, token=auth_pb2.Token(role=4)), metadata=tenant.md(Role.ADMIN))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violated_fields(error) == ["token.role"]
    # An admin may mint every role up to its own.
    for role in (access_pb2.ROLE_VIEWER, access_pb2.ROLE_EDITOR, access_pb2.ROLE_ADMIN):
        assert _mint(auth, tenant, role).role == role
    # Editors cannot revoke, list or read tokens either.
    token = _mint(auth, tenant)
    for call, req in ((auth.RevokeToken, auth_pb2.RevokeTokenRequest(name=token.name)),
                      (auth.GetToken, auth_pb2.GetTokenRequest(name=token.name)),
                      (auth.ListTokens, auth_pb2.ListTokensRequest(parent=tenant.parent))):
        assert _error(call, req, metadata=tenant.md(Role.EDITOR)).code() == \
            grpc.StatusCode.PERMISSION_DENIED


def test_another_tenants_tokens_are_not_found(auth, tenant: Tenant,  # type: ignore[no-untyped-def]
                                              other_tenant: Tenant) -> None:
    theirs = _mint(auth, other_tenant)
    md = tenant.md(Role.ADMIN)
    for call, req in (
            (auth.CreateToken, auth_pb2.CreateTokenRequest(
                parent=other_tenant.parent, token=auth_pb2.Token(role=access_pb2.ROLE_VIEWER))),
            (auth.ListTokens, auth_pb2.ListTokensRequest(parent=other_tenant.parent)),
            (auth.GetToken, auth_pb2.GetTokenRequest(name=theirs.name)),
            (auth.RevokeToken, auth_pb2.RevokeTokenRequest(name=theirs.name)),
            # Their token id under my project name: still not found.
            (auth.GetToken, auth_pb2.GetTokenRequest(
                name=f"{tenant.parent}/tokens/{theirs.name.rsplit('/', 1)[1]}"))):
        error = _error(call, req, metadata=md)
        assert error.code() == grpc.StatusCode.NOT_FOUND, (call, error.details())
    # And it still works: nothing was revoked.
    assert auth.GetCurrentPrincipal(auth_pb2.GetCurrentPrincipalRequest(),
                                    metadata=[("authorization", f"Bearer {theirs.secret}")])


def test_list_tokens_pages_with_tamper_checked_tokens(auth, tenant: Tenant) -> None:  # type: ignore[no-untyped-def]
    minted = [_mint(auth, tenant, display_name=f"t{i}").name for i in range(5)]
    md = tenant.md(Role.ADMIN)
    seen: list[str] = []
    page_token = ""
    pages = 0
    while True:
        page = auth.ListTokens(auth_pb2.ListTokensRequest(
            parent=tenant.parent, page_size=3, page_token=page_token), metadata=md)
        seen += [t.name for t in page.tokens]
        pages += 1
        page_token = page.next_page_token
        if not page_token:
            break
    assert pages == 3  # 3 fixture tokens + 5 minted = 8 tokens, 3 per page
    assert len(seen) == len(set(seen)) == 8 and set(minted) <= set(seen)

    first = auth.ListTokens(auth_pb2.ListTokensRequest(parent=tenant.parent, page_size=3),
                            metadata=md).next_page_token
    for bad in (first[:-2] + ("A" if first[-2] != "A" else "B") + first[-1],
                first.replace(".", "", 1), "garbage", "1.e30.AAAA"):
        error = _error(auth.ListTokens, auth_pb2.ListTokensRequest(
            parent=tenant.parent, page_size=3, page_token=bad), metadata=md)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _violated_fields(error) == ["page_token"]
    # A token of one list is not valid for another (other filter).
    error = _error(auth.ListTokens, auth_pb2.ListTokensRequest(
        parent=tenant.parent, page_size=3, page_token=first, show_inactive=True), metadata=md)
    assert _violated_fields(error) == ["page_token"]
    error = _error(auth.ListTokens, auth_pb2.ListTokensRequest(
        parent=tenant.parent, page_size=-1), metadata=md)
    assert _violated_fields(error) == ["page_size"]


def test_revoke_is_idempotent_and_hides_the_token_from_default_lists(auth, tenant: Tenant) -> None:  # type: ignore[no-untyped-def]
    token = _mint(auth, tenant)
    md = tenant.md(Role.ADMIN)
    first = auth.RevokeToken(auth_pb2.RevokeTokenRequest(name=token.name), metadata=md)
    assert first.HasField("revoke_time") and first.secret == ""
    second = auth.RevokeToken(auth_pb2.RevokeTokenRequest(name=token.name), metadata=md)
    assert second.revoke_time == first.revoke_time
    active = auth.ListTokens(auth_pb2.ListTokensRequest(parent=tenant.parent), metadata=md)
    assert token.name not in [t.name for t in active.tokens]
    everything = auth.ListTokens(auth_pb2.ListTokensRequest(parent=tenant.parent,
                                                            show_inactive=True), metadata=md)
    assert token.name in [t.name for t in everything.tokens]
    error = _error(auth.RevokeToken, auth_pb2.RevokeTokenRequest(
        name=f"{tenant.parent}/tokens/tok-doesnotexist"), metadata=md)
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_create_token_with_request_id_is_idempotent(auth, stack: LiveStack,  # type: ignore[no-untyped-def]
                                                    tenant: Tenant) -> None:
    request = auth_pb2.CreateTokenRequest(parent=tenant.parent, request_id="retry-1",
                                          token=auth_pb2.Token(role=access_pb2.ROLE_VIEWER))
    first = auth.CreateToken(request, metadata=tenant.md(Role.ADMIN))
    retry = auth.CreateToken(request, metadata=tenant.md(Role.ADMIN))
    assert retry.name == first.name and first.secret and retry.secret == ""
    rows = db_execute(stack.database_url, "SELECT count(*) AS n FROM api_tokens WHERE "
                      "project_id = %s AND request_id = 'retry-1'", (tenant.project_id,))
    assert rows == [{"n": 1}]


def test_expired_token_is_refused(auth, tenant: Tenant) -> None:  # type: ignore[no-untyped-def]
    soon = timestamp_pb2.Timestamp(seconds=int(time.time()) + 2)
    token = _mint(auth, tenant, expire_time=soon)
    md = [("authorization", f"Bearer {token.secret}")]
    assert auth.GetCurrentPrincipal(auth_pb2.GetCurrentPrincipalRequest(), metadata=md)

    def refused() -> bool:
        try:
            auth.GetCurrentPrincipal(auth_pb2.GetCurrentPrincipalRequest(), metadata=md)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in exc.details()
        return False

    wait_for(refused, 10, interval=0.2, what="the expired token refused")
    # Expiry is checked on every call, cached verdict or not: no grace after the deadline.
