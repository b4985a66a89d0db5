"""Configuration from the environment (ARCHITECTURE §8). One place reads env; everything else
takes a Settings."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parents[2]

# Default gRPC ports of the services; the stack and tests override them.
DEFAULT_PORTS = {"registry": 50061, "orchestrator": 50062, "sandbox": 50063}

# The edge's body limit (launch plan: client_max_body_size 25m); services accept the same.
MAX_MESSAGE_BYTES = 25 * 1024 * 1024


class ConfigError(ValueError):
    """A setting is missing or malformed. The message names the variable and the fix."""


_ACCEPTED_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2",
                     "postgresql+asyncpg")


def normalize_database_url(url: str) -> str:
    """Return a libpq URL (`postgresql://…`) for any accepted SQLAlchemy-style spelling.

    Accepts `postgresql://`, `postgres://`, `postgresql+psycopg://` and `postgresql+asyncpg://`
    (the launch plan's form) so one DATABASE_URL serves psql, psycopg and Alembic alike.
    """
    raw = url.strip()
    if not raw:
        raise ConfigError("DATABASE_URL is empty")
    try:
        parts = urlsplit(raw)
        _ = parts.port  # raises ValueError for a non-numeric port
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL is malformed ({exc}); expected "
                          "postgresql://user:password@host:5432/dbname") from None
    if parts.scheme not in _ACCEPTED_SCHEMES:
        raise ConfigError(
            f"DATABASE_URL scheme {parts.scheme!r} is not supported; use postgresql://, "
            "postgresql+psycopg:// or postgresql+asyncpg://")
    if not parts.netloc and "host=" not in parts.query:
        raise ConfigError("DATABASE_URL names no host; expected "
                          "postgresql://user:password@host:5432/dbname")
    if not parts.path.strip("/"):
        raise ConfigError("DATABASE_URL names no database; add /dbname to the URL")
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


def sqlalchemy_url(libpq_url: str) -> str:
    """The same database as an SQLAlchemy URL for Alembic (psycopg 3 driver)."""
    return "postgresql+psycopg://" + libpq_url.split("://", 1)[1]


def redact_url(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _flag(env: dict[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; use 1 or 0")


def _number(env: dict[str, str], name: str, default: float, *, minimum: float = 0) -> float:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if number < minimum:
        raise ConfigError(f"{name}={value!r} must be at least {minimum}")
    return number


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 30.0
    memory_mb: int = 512
    cpu_s: float = 10.0
    # Executions running at once; more wait up to queue_wait_s, then RESOURCE_EXHAUSTED.
    concurrency: int = 4
    queue_wait_s: float = 2.0


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    run_migrations: bool = False
    require_db: bool = False
    log_level: str = "INFO"
    bind_host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    sandbox_address: str = f"127.0.0.1:{DEFAULT_PORTS['sandbox']}"
    registry_address: str = f"127.0.0.1:{DEFAULT_PORTS['registry']}"
    sandbox: SandboxLimits = SandboxLimits()
    secret_key: str | None = None
    home: Path = REPO_ROOT / ".iceos"
    disable_seccomp: bool = False
    # Seconds a service waits for in-flight calls after SIGTERM before cancelling them.
    shutdown_grace_s: float = 20.0
    # How long an authenticated token is trusted without re-reading Postgres: the bound on how
    # long a revoked token keeps working.
    auth_cache_ttl_s: float = 2.0
    metrics_port: int | None = None
    # Shared by the services to sign service tokens (services.common.service_auth):
    # ICEOS_SERVICE_KEY, else derived from ICEOS_SECRET_KEY (see service_key_from).
    service_key: bytes | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        raw_db = env.get("DATABASE_URL")
        database_url = normalize_database_url(raw_db) if raw_db else None
        ports = dict(DEFAULT_PORTS)
        for service in ports:
            ports[service] = int(_number(env, f"ICEOS_{service.upper()}_PORT", ports[service]))
        level = env.get("ICEOS_LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"ICEOS_LOG_LEVEL={level!r}; use DEBUG, INFO, WARNING or ERROR")
        metrics = env.get("ICEOS_METRICS_PORT")
        return cls(
            database_url=database_url,
            redis_url=env.get("REDIS_URL") or None,
            run_migrations=_flag(env, "ICEOS_RUN_MIGRATIONS"),
            require_db=_flag(env, "ICEOS_REQUIRE_DB"),
            log_level=level,
            bind_host=env.get("ICEOS_BIND_HOST", "127.0.0.1"),
            ports=ports,
            sandbox_address=env.get("ICEOS_SANDBOX_ADDRESS", f"127.0.0.1:{ports['sandbox']}"),
            registry_address=env.get("ICEOS_REGISTRY_ADDRESS", f"127.0.0.1:{ports['registry']}"),
            sandbox=SandboxLimits(
                timeout_s=_number(env, "ICEOS_SANDBOX_TIMEOUT_S", 30.0, minimum=0.001),
                memory_mb=int(_number(env, "ICEOS_SANDBOX_MEMORY_MB", 512, minimum=16)),
                cpu_s=_number(env, "ICEOS_SANDBOX_CPU_S", 10.0, minimum=0.001),
                concurrency=int(_number(env, "ICEOS_SANDBOX_CONCURRENCY", 4, minimum=1)),
                queue_wait_s=_number(env, "ICEOS_SANDBOX_QUEUE_S", 2.0),
            ),
            secret_key=env.get("ICEOS_SECRET_KEY") or None,
            home=Path(env.get("ICEOS_HOME") or REPO_ROOT / ".iceos"),
            disable_seccomp=_flag(env, "ICE_DISABLE_SECCOMP"),
            shutdown_grace_s=_number(env, "ICEOS_SHUTDOWN_GRACE_S", 20.0),
            auth_cache_ttl_s=_number(env, "ICEOS_AUTH_CACHE_TTL_S", 2.0),
            metrics_port=int(metrics) if metrics else None,
            service_key=service_key_from(env),
        )


def service_key_from(env: dict[str, str]) -> bytes | None:
    """ICEOS_SERVICE_KEY, else a key derived from ICEOS_SECRET_KEY, so a deployment that sets
    only the secret key (docker-compose.yml, the Helm chart) still lets the orchestrator call
    the sandbox. The derivation is one-way: a service token never exposes the secret key."""
    if env.get("ICEOS_SERVICE_KEY"):
        return env["ICEOS_SERVICE_KEY"].encode()
    if env.get("ICEOS_SECRET_KEY"):
        return hmac.new(env["ICEOS_SECRET_KEY"].encode(), b"iceos service tokens",
                        hashlib.sha256).hexdigest().encode()
    return None
