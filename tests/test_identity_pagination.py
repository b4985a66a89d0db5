"""Page tokens (services/common/pagination.py): opaque, scoped, tamper-checked, keyed per
database or by ICEOS_SECRET_KEY."""

from __future__ import annotations

import asyncio

import pytest

from services.common import errors, pagination
from services.common.db import Database


def test_round_trip_and_scope() -> None:
    token = pagination.encode({"after": ["2026-01-01T00:00:00+00:00", "tok-1"]}, scope="a")
    assert token.count(".") == 2 and "tok-1" not in token  # opaque
    assert pagination.decode(token, scope="a") == {"after": ["2026-01-01T00:00:00+00:00",
                                                             "tok-1"]}
    with pytest.raises(errors.InvalidArgument) as info:
        pagination.decode(token, scope="b")
    assert info.value.violations[0].field == "page_token"


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),       # MAC
    lambda t: t.split(".")[0] + "." + t.split(".")[1][::-1] + "." + t.split(".")[2],  # state
    lambda t: "2" + t[1:],                                    # version
    lambda t: t + ".x", lambda t: "", lambda t: "%%%", lambda t: "1.!!!.!!!",
])
def test_tampered_tokens_are_invalid_argument(mutate) -> None:  # type: ignore[no-untyped-def]
    token = pagination.encode({"after": "p-1", "n": 2}, scope="s")
    with pytest.raises(errors.InvalidArgument):
        pagination.decode(mutate(token), scope="s")


def test_page_size_rules() -> None:
    assert pagination.page_size(0) == 50
    assert pagination.page_size(5000) == 1000
    with pytest.raises(errors.InvalidArgument):
        pagination.page_size(-1)


def test_key_is_shared_through_the_database_or_derived_from_the_secret(
        fresh_database: str) -> None:
    async def load(secret: str | None) -> str:
        db = Database(fresh_database)
        try:
            await pagination.load_key(db, secret)
        finally:
            await db.close()
        return pagination.encode({"x": 1}, scope="s")

    try:
        first = asyncio.run(load(None))
        pagination.set_key(b"something else entirely, 32 byte")
        assert asyncio.run(load(None)) == first  # a second process loads the same key
        with_secret = asyncio.run(load("k1"))
        assert with_secret != first
        assert asyncio.run(load("k1")) == with_secret
    finally:
        pagination.set_key(b"\0" * 32)
