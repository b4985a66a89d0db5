"""Page tokens (services/common/pagination.py): opaque, scoped, tamper-checked, keyed by the
configured key or else by a random key the database keeps."""

from __future__ import annotations

import asyncio

import pytest

from services.common import errors, pagination
from services.common.db import Database


def test_round_trip_and_scope() -> None:
    token = pagination.encode({"after": ["2026-01-01T00:00:00+00:00", "tok-1"]}, scope="a")
    assert "tok-1" not in token  # opaque
    assert pagination.decode(token, scope="a") == {"after": ["2026-01-01T00:00:00+00:00",
                                                             "tok-1"]}
    with pytest.raises(errors.InvalidArgument) as info:
        pagination.decode(token, scope="b")
    assert info.value.violations[0].field == "page_token"


@pytest.mark.parametrize("mutate", [
    lambda t: t.split(".")[0] + "." + t.split(".")[1][::-1],          # signature
    lambda t: t.split(".")[0][::-1] + "." + t.split(".")[1],          # state
    lambda t: t + ".x", lambda t: "", lambda t: "%%%", lambda t: "!!!.!!!",
])
def test_tampered_tokens_are_invalid_argument(mutate) -> None:  # type: ignore[no-untyped-def]
    token = pagination.encode({"after": "p-1", "n": 2}, scope="s")
    assert mutate(token) != token
    with pytest.raises(errors.InvalidArgument):
        pagination.decode(mutate(token), scope="s")


def test_page_size_rules() -> None:
    assert pagination.page_size(0) == 50
    assert pagination.page_size(1000) == 1000
    for bad in (-1, 1001):
        with pytest.raises(errors.InvalidArgument):
            pagination.page_size(bad)


def test_without_a_configured_key_the_database_keeps_one(fresh_database: str) -> None:
    async def load() -> str:
        db = Database(fresh_database)
        try:
            await pagination.load_key(db)
        finally:
            await db.close()
        return pagination.encode({"x": 1}, scope="s")

    default = pagination._key
    try:
        first = asyncio.run(load())
        assert pagination._key != default  # never the well-known default
        pagination._key = default  # as a second process starts
        assert asyncio.run(load()) == first  # it loads the same key: replicas agree
        pagination.configure(b"k1")  # a configured key wins over the database's
        configured = pagination.encode({"x": 1}, scope="s")
        assert asyncio.run(load()) == configured != first
    finally:
        pagination._key = default
