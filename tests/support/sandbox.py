"""Sandbox test helpers: call Execute, build limits, start a sandbox service of one's own with
chosen settings, and look at the processes it runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
from iceos.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

from services.common.principal import Role
from services.common.settings import REPO_ROOT

from .processes import ServiceProcess
from .stack import Tenant

EXAMPLES = REPO_ROOT / "examples" / "sandbox"
ZYGOTE_MARK = "services.sandbox.child"


def limits(*, timeout_s: float | None = None, cpu_s: float | None = None,
           memory_mb: int | None = None, max_output_bytes: int | None = None,
           fuel: int | None = None) -> sandbox_pb2.Limits:
    out = sandbox_pb2.Limits()
    if timeout_s is not None:
        out.timeout.FromNanoseconds(int(timeout_s * 1e9))
    if cpu_s is not None:
        out.cpu_time.FromNanoseconds(int(cpu_s * 1e9))
    if memory_mb is not None:
        out.memory_mb = memory_mb
    if max_output_bytes is not None:
        out.max_output_bytes = max_output_bytes
    if fuel is not None:
        out.fuel = fuel
    return out


def request(tenant: Tenant, *, source: str | None = None, wasm: bytes | None = None,
            inputs: object = None, idempotency_key: str = "",
            limit: sandbox_pb2.Limits | None = None) -> sandbox_pb2.ExecuteRequest:
    from services.common.convert import python_to_value
    req = sandbox_pb2.ExecuteRequest(
        parent=tenant.parent,
        language=sandbox_pb2.LANGUAGE_WASM if wasm is not None else sandbox_pb2.LANGUAGE_PYTHON,
        source=source or "", wasm_module=wasm or b"", idempotency_key=idempotency_key)
    if inputs is not None:
        req.inputs.CopyFrom(python_to_value(inputs))
    if limit is not None:
        req.limits.CopyFrom(limit)
    return req


def execute(channel: grpc.Channel, tenant: Tenant, *, role: Role = Role.EDITOR,
            timeout: float = 90.0, **kwargs: object) -> sandbox_pb2.ExecuteResponse:
    stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
    return stub.Execute(request(tenant, **kwargs), metadata=tenant.md(role),  # type: ignore[arg-type]
                        timeout=timeout)


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ICEOS_", "DATABASE_URL", "REDIS_URL", "ICE_DISABLE_SECCOMP"))}
    env.update(DATABASE_URL=database_url, ICEOS_RUN_MIGRATIONS="1")
    env.update(extra)
    return env


@contextlib.contextmanager
def sandbox_service(database_url: str, log_dir: Path, **env: str) -> Iterator[ServiceProcess]:
    """A sandbox service process of its own, with extra environment (settings, secrets)."""
    service = ServiceProcess("sandbox", service_env(database_url, **env), log_dir).start(
        timeout=60)
    try:
        yield service
    finally:
        service.stop()


def zygotes(service: ServiceProcess) -> list[psutil.Process]:
    """The service's zygote processes."""
    assert service.proc is not None
    found = []
    for child in psutil.Process(service.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if any(ZYGOTE_MARK in part for part in child.cmdline()):
                found.append(child)
    return found


def processes_of_uid(uid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["uids"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["uids"] and proc.info["uids"].real == uid:
                found.append(proc)
    return found
