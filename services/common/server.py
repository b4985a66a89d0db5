"""Server bootstrap shared by the three services: a grpc.aio server with the interceptor chain,
health per service name, reflection, message limits matching the edge, migrations at start, a
database readiness watch, and graceful shutdown (SIGTERM → NOT_SERVING → drain → exit 0)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import psycopg
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from . import logs, migrate, pagination
from .auth import Authenticator
from .db import Database, watch_readiness
from .interceptors import ServiceInterceptor
from .redis_client import connect as connect_redis
from .settings import MAX_MESSAGE_BYTES, ConfigError, Settings, redact_url

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Runtime:
    """What a service's servicers and background tasks are given."""

    settings: Settings
    db: Database
    redis: object | None
    authenticator: Authenticator
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class ServiceSpec:
    # Short name: registry, orchestrator or sandbox (also the port key in Settings.ports).
    name: str
    # Full gRPC service names served (for health and reflection).
    service_names: Sequence[str]
    # Adds servicers to the server.
    register: Callable[[grpc.aio.Server, Runtime], None]
    # Background work started once the schema is ready (e.g. run workers); cancelled at stop.
    background: Sequence[Callable[[Runtime], Awaitable[None]]] = ()
    # Called after the server stopped accepting calls, before the pool closes.
    on_stop: Callable[[Runtime], Awaitable[None]] | None = None
    # Database pool bounds.
    pool_max: int = 10


def server_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]


def require_database(settings: Settings) -> None:
    """Fail fast (ICEOS_REQUIRE_DB=1): exit with a clear message when Postgres is unreachable."""
    assert settings.database_url
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        print(f"error: ICEOS_REQUIRE_DB=1 and Postgres at {redact_url(settings.database_url)} "
              f"is unreachable: {first}", file=sys.stderr)
        raise SystemExit(1) from None


async def _prepare_schema(settings: Settings, runtime: Runtime) -> None:
    """Run migrations (when enabled), retrying while the database is unreachable."""
    assert settings.database_url
    delay = 0.5
    while not runtime.stopping.is_set():
        try:
            if settings.run_migrations:
                await asyncio.to_thread(migrate.upgrade, settings.database_url)
            return
        except Exception as exc:  # noqa: BLE001 - keep trying; readiness reports the state
            log.warning("migrations not applied yet: %s", str(exc).splitlines()[0][:300])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def serve(spec: ServiceSpec, settings: Settings | None = None) -> int:
    """Run a service until SIGTERM/SIGINT. Returns the process exit code."""
    if settings is None:
        settings = Settings.from_env()
    logs.configure(spec.name, settings.log_level)
    if not settings.database_url:
        print(f"error: DATABASE_URL is not set; {spec.name} needs Postgres "
              "(`make run` sets it up for you)", file=sys.stderr)
        return 2
    if settings.require_db:
        await asyncio.to_thread(require_database, settings)

    pagination.configure(settings.service_key or (settings.secret_key or "").encode() or None)
    # The schema this build needs: the service is SERVING only with the database at this head.
    head = migrate.head_revision()
    db = Database(settings.database_url, max_size=spec.pool_max)
    runtime = Runtime(settings=settings, db=db, redis=connect_redis(settings.redis_url),
                      authenticator=Authenticator(db, settings.auth_cache_ttl_s,
                                                  settings.service_key))
    interceptor = ServiceInterceptor(runtime.authenticator, db)
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=server_options(),
        maximum_concurrent_rpcs=None,
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    spec.register(server, runtime)
    reflection.enable_server_reflection(
        [*spec.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME], server)
    for name in ("", *spec.service_names):
        await health.set(name, NOT_SERVING)

    address = f"{settings.bind_host}:{settings.ports[spec.name]}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        print(f"error: {spec.name} cannot listen on {address}: the port is taken or not "
              f"allowed; set ICEOS_{spec.name.upper()}_PORT to a free port", file=sys.stderr)
        return 1
    await server.start()
    log.info("listening", extra={"address": address})
    if settings.metrics_port:
        # Prometheus text format on its own port (RPC counts and latencies per method).
        from prometheus_client import start_http_server
        start_http_server(settings.metrics_port, addr=settings.bind_host)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stopping.set)

    async def set_health(ready: bool) -> None:
        if runtime.stopping.is_set():
            return
        if ready:
            runtime.ready.set()
        else:
            runtime.ready.clear()
        for name in ("", *spec.service_names):
            await health.set(name, SERVING if ready else NOT_SERVING)

    tasks: list[asyncio.Task[None]] = []

    async def start_when_schema_ready() -> None:
        await _prepare_schema(settings, runtime)
        tasks.append(asyncio.create_task(watch_readiness(db, head, set_health)))
        await runtime.ready.wait()
        try:
            await pagination.load_key(db)
        except Exception:  # noqa: BLE001 - page tokens then use the default key
            log.warning("could not load the page-token key", exc_info=True)
        for work in spec.background:
            tasks.append(asyncio.create_task(work(runtime)))

    boot = asyncio.create_task(start_when_schema_ready())
    await runtime.stopping.wait()

    log.info("stopping: NOT_SERVING, draining in-flight calls",
             extra={"grace_s": settings.shutdown_grace_s})
    await health.enter_graceful_shutdown()
    boot.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(boot, *tasks, return_exceptions=True)
    await server.stop(settings.shutdown_grace_s)
    await interceptor.drain_audit()
    if spec.on_stop is not None:
        await spec.on_stop(runtime)
    if runtime.redis is not None:
        await runtime.redis.aclose()  # type: ignore[attr-defined]
    await db.close()
    log.info("stopped")
    return 0


def main(spec: ServiceSpec) -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # uvloop: the event loop in C (libuv), a fraction of asyncio's own cost per callback,
    # timer and socket wait, which the engine pays for every node.
    raise SystemExit(uvloop.run(serve(spec, settings)))
