"""Redis: wake-ups, pub/sub, rate limits and caches. Nothing durable lives only here, so every
caller must treat Redis as optional: a failed call degrades (polling), never loses data."""

from __future__ import annotations

import redis.asyncio as aioredis


def connect(url: str | None) -> aioredis.Redis | None:
    """A client for `url`, or None when Redis is not configured. Connections are lazy: an
    unreachable Redis shows up as errors on use, which callers tolerate."""
    if not url:
        return None
    return aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0,
                                   health_check_interval=10, retry_on_timeout=False)
