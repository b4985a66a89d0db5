"""A live iceOS stack for tests: the three services and Envoy on free loopback ports against the
shared test Postgres and Redis, plus tenants (projects with a token per role)."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg

from services.common.principal import Role
from services.registry.identity import store as identity_store
from services.stack import envoy
from services.stack.embedded import free_port

from .processes import ServiceProcess, wait_for

SERVICES = ("registry", "orchestrator", "sandbox")
# The key the test stack's services share for service tokens (services.common.service_auth).
SERVICE_KEY = b"test-service-key-0123456789abcdef"


@dataclass
class Edge:
    """An Envoy process rendered from envoy/envoy.yaml.tmpl."""

    upstreams: dict[str, tuple[str, int]]
    workdir: Path
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # EdgeConfig fields to override (cors_origins, rate_limit_rps, auth_cache_ms, ...). The
    # test edge's rate limit is generous so no test suite is throttled; tests of the limiter
    # start their own Edge with a low one.
    options: dict[str, Any] = field(default_factory=lambda: {"rate_limit_rps": 100_000})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> "Edge":
        config = envoy.EdgeConfig(edge_port=self.port, admin_port=self.admin_port,
                                  upstreams=self.upstreams, listen_address="127.0.0.1",
                                  **self.options)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"envoy-{self.port}.log", "ab")
        self.proc = envoy.start(config, self.workdir / f"envoy-{self.port}.yaml",
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait_ready:
            wait_for(lambda: self.http_status("/readyz") == 200, 30, what="edge /readyz 200")
        return self

    def http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Tenant:
    """A project with one token per role."""

    project_id: str
    organization_id: str
    tokens: dict[Role, str]

    @property
    def parent(self) -> str:
        return f"projects/{self.project_id}"

    def md(self, role: Role = Role.EDITOR) -> list[tuple[str, str]]:
        """gRPC metadata carrying the role's token."""
        return [("authorization", f"Bearer {self.tokens[role]}")]

    def headers(self, role: Role = Role.EDITOR) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def create_tenant(database_url: str, organization_id: str | None = None,
                  project_id: str | None = None) -> Tenant:
    """Insert an organization (if needed), a project and a token per role, directly in SQL
    through the same store functions the registry uses."""
    organization_id = organization_id or f"org-{uuid.uuid4().hex[:10]}"
    project_id = project_id or f"p-{uuid.uuid4().hex[:12]}"

    async def make() -> Tenant:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            conn.row_factory = psycopg.rows.dict_row
            await identity_store.create_organization(conn, organization_id)
            await identity_store.create_project(conn, project_id, organization_id)
            secrets: dict[Role, str] = {}
            for role in Role:
                _, secret = await identity_store.insert_token(
                    conn, organization_id=organization_id, project_id=project_id, role=role,
                    display_name=f"test {role.label}", creator="tests")
                secrets[role] = secret
            return Tenant(project_id, organization_id, secrets)

    return asyncio.run(make())


@dataclass
class LiveStack:
    database_url: str
    redis_url: str
    workdir: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    edge: Edge | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        import os
        env = dict(os.environ)
        env.update({"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
                    "ICEOS_RUN_MIGRATIONS": "1", "ICEOS_HOME": str(self.workdir),
                    "ICEOS_LOG_LEVEL": "INFO", "ICEOS_SERVICE_KEY": SERVICE_KEY.decode()})
        env.update(self.extra_env)
        return env

    def start(self) -> "LiveStack":
        env = self.env()
        procs = {name: ServiceProcess(name, env, self.workdir / "logs") for name in SERVICES}
        for name, proc in procs.items():
            env[f"ICEOS_{name.upper()}_PORT"] = str(proc.port)
        env["ICEOS_SANDBOX_ADDRESS"] = procs["sandbox"].address
        env["ICEOS_REGISTRY_ADDRESS"] = procs["registry"].address
        for proc in procs.values():
            proc.env = env
            proc.start(wait=False)
        for proc in procs.values():
            proc.wait_serving(60)
        self.services = procs
        self.edge = Edge({n: ("127.0.0.1", p.port) for n, p in procs.items()},
                         self.workdir / "edge").start()
        return self

    def address(self, service: str) -> str:
        return self.services[service].address

    def channel(self, service: str | None = None) -> grpc.Channel:
        """A channel to a service directly, or to the edge when `service` is None."""
        assert self.edge is not None
        target = self.edge.address if service is None else self.address(service)
        return grpc.insecure_channel(target)

    def tenant(self) -> Tenant:
        return create_tenant(self.database_url)

    def stop(self) -> None:
        if self.edge is not None:
            self.edge.stop()
        for proc in self.services.values():
            proc.stop()
