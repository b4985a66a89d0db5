"""The orchestrator's wake-up listener against a real Redis: when the subscription dies, it says
so once in the log and the process falls back to polling, whatever else saw Redis fail first."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common import redis_client
from services.orchestrator.notify import Notifier
from services.stack.embedded import EmbeddedRedis, free_port


async def _until(predicate, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("publish_failed_first", [False, True])
def test_a_lost_subscription_is_logged_once(tmp_path, caplog, publish_failed_first) -> None:  # type: ignore[no-untyped-def]
    server = EmbeddedRedis(free_port(), tmp_path / "redis")
    server.start()

    async def scenario() -> None:
        client = redis_client.connect(server.url)
        # The listener never touches the database; the poller only does for watched runs.
        notifier = Notifier(None, client)  # type: ignore[arg-type]
        notifier.start()
        try:
            await _until(lambda: notifier.redis_ok, 10, "the subscription")
            server.kill()
            if publish_failed_first:
                # What a PUBLISH that failed before the listener noticed leaves behind.
                notifier.redis_ok = False
            await _until(lambda: "redis subscription lost" in caplog.text, 10,
                         "the loss to be logged")
            assert not notifier.redis_ok
            await asyncio.sleep(2.5)  # retries against the dead server say nothing more
        finally:
            await notifier.stop()
            await client.aclose()  # type: ignore[union-attr]

    try:
        with caplog.at_level(logging.INFO, logger="services.orchestrator.notify"):
            asyncio.run(scenario())
    finally:
        server.stop()
    assert caplog.text.count("redis subscription up") == 1
    assert caplog.text.count("redis subscription lost") == 1
