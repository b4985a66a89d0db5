"""Edge overhead, in one run: unary RPC latency (p50, p99) and throughput, directly against the
registry and through Envoy, for gRPC and JSON.

The call is AuthService.GetCurrentPrincipal: the cheapest authenticated RPC, so what is measured
is the path, not the handler. Rows, side by side:
  - gRPC direct: the registry's own port (it authenticates the token itself, cached).
  - gRPC via Envoy, router only: the same Envoy with every filter but the router removed — the
    floor any proxy hop costs on this machine.
  - gRPC / JSON via the edge, Check every call: the real edge with the verdict cache off, so
    every request waits for the registry's ext_authz Check.
  - gRPC / JSON via the edge: the real edge as shipped (verdict cache on).
A second table takes the shipped edge apart: the same config with one part removed at a time
(access log, request ids, header mutation, health/CORS/rate limit, auth, buffer, transcoder), so
each part's cost is the shipped edge's p50 minus that variant's (latency only, gRPC).
Latency is sequential calls from one client, in interleaved rounds so drift hits every row alike;
throughput is 3 s of concurrent load per row. The client is Python on the same 2 cores, so
throughput is client-bound: compare rows with each other, not with other machines.

    make bench-edge        # or: .venv/bin/python -m bench.edge
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import yaml
from iceos.auth.v1 import auth_pb2, auth_pb2_grpc

from services.common import migrate
from services.common.principal import Role
from services.stack import envoy
from services.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from tests.support.processes import wait_for
from tests.support.stack import Edge, LiveStack, create_tenant

RESULTS = Path(__file__).resolve().parents[1] / "results" / "edge.json"
ROUNDS = int(os.environ.get("BENCH_EDGE_ROUNDS", "6"))
CALLS_PER_ROUND = int(os.environ.get("BENCH_EDGE_CALLS", "500"))
THROUGHPUT_S = float(os.environ.get("BENCH_EDGE_SECONDS", "3"))
CONCURRENCY = 16
UNLIMITED = {"rate_limit_rps": 1_000_000}
SHIPPED = "edge as shipped"


Manager = dict[str, Any]  # an HTTP connection manager's typed_config
ROUTER = "envoy.filters.http.router"
_HTTP = "envoy.filters.http."


def _drop_filters(*names: str) -> Callable[[Manager], None]:
    def edit(manager: Manager) -> None:
        manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] not in names]
    return edit


def _router_only(manager: Manager) -> None:
    _drop_filters(*{f["name"] for f in manager["http_filters"]} - {ROUTER})(manager)
    manager.pop("local_reply_config")


def _no_request_id(manager: Manager) -> None:
    manager.update(generate_request_id=False, always_set_request_id_in_response=False)


# Each part of the shipped edge, as an edit that removes it from the connection manager.
PARTS: dict[str, Callable[[Manager], None]] = {
    "access log": lambda manager: manager.pop("access_log"),
    "request ids": _no_request_id,
    "header mutation": _drop_filters(_HTTP + "header_mutation"),
    "health, CORS, rate limit": _drop_filters(_HTTP + "health_check", _HTTP + "cors",
                                              _HTTP + "local_ratelimit"),
    "auth (Lua verdict cache + ext_authz)": _drop_filters(_HTTP + "lua", _HTTP + "ext_authz"),
    "buffer (body limit)": _drop_filters(_HTTP + "buffer"),
    "JSON transcoder": _drop_filters(_HTTP + "grpc_json_transcoder"),
}


def variant_envoy(upstreams: dict[str, tuple[str, int]], workdir: Path, label: str,
                  edit: Callable[[Manager], None]) -> tuple[subprocess.Popen[bytes], str]:
    """The shipped config (without a rate limit in the way), changed by `edit`, on its own port."""
    port = free_port()
    config = yaml.safe_load(envoy.render(envoy.EdgeConfig(
        edge_port=port, admin_port=free_port(), upstreams=upstreams,
        listen_address="127.0.0.1", **UNLIMITED)))
    edit(config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
         ["typed_config"])
    slug = "".join(c if c.isalnum() else "-" for c in label)
    path = workdir / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(workdir / f"{slug}.log", "ab")
    proc = subprocess.Popen(envoy.command(path), stdout=log, stderr=subprocess.STDOUT)
    return proc, f"127.0.0.1:{port}"


class GrpcTarget:
    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self.metadata = [("authorization", f"Bearer {token}")]
        self.channel = grpc.insecure_channel(address)
        self.stub = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.request = auth_pb2.GetCurrentPrincipalRequest()

    def call(self) -> None:
        self.stub.GetCurrentPrincipal(self.request, metadata=self.metadata, timeout=10)

    async def load(self, seconds: float) -> int:
        done = 0
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await stub.GetCurrentPrincipal(self.request, metadata=self.metadata,
                                                   timeout=10)
                    done += 1
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return done

    def close(self) -> None:
        self.channel.close()


class JsonTarget:
    def __init__(self, address: str, token: str) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)

    def call(self) -> None:
        self.conn.request("GET", "/v1/principal", headers=self.headers)
        response = self.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /v1/principal: {response.status}")

    async def load(self, seconds: float) -> int:
        request = ("GET /v1/principal HTTP/1.1\r\nHost: edge\r\n"
                   f"Authorization: {self.headers['Authorization']}\r\n\r\n").encode()
        deadline = time.perf_counter() + seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                while time.perf_counter() < deadline:
                    writer.write(request)
                    status = await reader.readline()
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
                    if b" 200 " not in status:
                        raise RuntimeError(status.decode())
                    done += 1
            finally:
                writer.close()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return done

    def close(self) -> None:
        self.conn.close()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latencies(targets: dict[str, GrpcTarget | JsonTarget]) -> dict[str, list[float]]:
    """Sequential call times per target, in interleaved rounds."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for target in targets.values():  # warm connections and every cache
        for _ in range(200):
            target.call()
    for _ in range(ROUNDS):
        for name, target in targets.items():
            call: Callable[[], None] = target.call
            for _ in range(CALLS_PER_ROUND):
                started = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - started)
    return samples


def latency_row(name: str, samples: list[float]) -> dict[str, Any]:
    return {"path": name, "p50_ms": percentile(samples, 0.50) * 1000,
            "p99_ms": percentile(samples, 0.99) * 1000,
            "mean_ms": statistics.fmean(samples) * 1000, "calls": len(samples)}


def measure(targets: dict[str, GrpcTarget | JsonTarget]) -> list[dict[str, Any]]:
    samples = latencies(targets)
    rows = []
    for name, target in targets.items():
        rps = asyncio.run(target.load(THROUGHPUT_S)) / THROUGHPUT_S
        rows.append({**latency_row(name, samples[name]),
                     "protocol": "gRPC" if isinstance(target, GrpcTarget) else "JSON",
                     "throughput_rps": rps})
    return rows


def measure_parts(edge_address: str, variants: dict[str, str],
                  token: str) -> list[dict[str, Any]]:
    """The shipped edge against each variant without one part, in the same interleaved rounds."""
    targets: dict[str, GrpcTarget | JsonTarget] = {SHIPPED: GrpcTarget(edge_address, token)}
    targets.update({f"without {part}": GrpcTarget(address, token)
                    for part, address in variants.items()})
    try:
        samples = latencies(targets)
    finally:
        for target in targets.values():
            target.close()
    shipped = percentile(samples[SHIPPED], 0.50) * 1000
    rows = []
    for name in targets:
        row = latency_row(name, samples[name])
        row["part_cost_p50_ms"] = None if name == SHIPPED else shipped - row["p50_ms"]
        rows.append(row)
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        work = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            postgres = EmbeddedPostgres(work / "pgdata", free_port(), log_file=work / "pg.log")
        postgres.start()
        redis = EmbeddedRedis(free_port(), work / "redis")
        redis.start()
        live: LiveStack | None = None
        extra: list[Edge] = []
        envoys: list[subprocess.Popen[bytes]] = []
        targets: dict[str, GrpcTarget | JsonTarget] = {}
        try:
            migrate.upgrade(postgres.url)
            live = LiveStack(database_url=postgres.url, redis_url=redis.url,
                             workdir=work / "stack", extra_env={"ICEOS_LOG_LEVEL": "WARNING"})
            live.start()
            assert live.edge is not None
            live.edge.stop()  # restart it without a rate limit in the way
            live.edge = Edge(live.edge.upstreams, work / "edge", options=UNLIMITED).start()
            uncached = Edge(live.edge.upstreams, work / "uncached",
                            options={**UNLIMITED, "auth_cache_ms": 0}).start()
            extra.append(uncached)
            token = create_tenant(postgres.url).tokens[Role.VIEWER]
            addresses = {}
            for label, edit in {"router only": _router_only, **PARTS}.items():
                proc, addresses[label] = variant_envoy(live.edge.upstreams, work, label, edit)
                envoys.append(proc)
                probe = GrpcTarget(addresses[label], token)
                wait_for(lambda: _ok(probe.call), 30, what=f"Envoy, {label}")
                probe.close()
            targets = {
                "gRPC direct (registry port)": GrpcTarget(live.address("registry"), token),
                "gRPC via Envoy, router only": GrpcTarget(addresses.pop("router only"), token),
                "gRPC via edge, Check every call": GrpcTarget(uncached.address, token),
                "gRPC via edge": GrpcTarget(live.edge.address, token),
                "JSON via edge, Check every call": JsonTarget(uncached.address, token),
                "JSON via edge": JsonTarget(live.edge.address, token),
            }
            rows = measure(targets)
            parts = measure_parts(live.edge.address, addresses, token)
        finally:
            for target in targets.values():
                target.close()
            for proc in envoys:
                proc.terminate()
                proc.wait()
            for edge in extra:
                edge.stop()
            if live is not None:
                live.stop()
            redis.stop()
            postgres.stop()
    report(rows, parts)
    return 0


def _ok(call: Callable[[], None]) -> bool:
    try:
        call()
        return True
    except grpc.RpcError:
        return False


def report(rows: list[dict[str, Any]], parts: list[dict[str, Any]]) -> None:
    by = {r["path"]: r for r in rows}
    direct = by["gRPC direct (registry port)"]
    overhead = {
        "grpc_p50_ms": by["gRPC via edge"]["p50_ms"] - direct["p50_ms"],
        "grpc_p99_ms": by["gRPC via edge"]["p99_ms"] - direct["p99_ms"],
        "grpc_p50_ms_router_only": by["gRPC via Envoy, router only"]["p50_ms"]
        - direct["p50_ms"],
        "grpc_p50_ms_check_every_call": by["gRPC via edge, Check every call"]["p50_ms"]
        - direct["p50_ms"],
        "json_p50_ms_vs_grpc_direct": by["JSON via edge"]["p50_ms"] - direct["p50_ms"],
    }
    print(f"\nedge benchmark: GetCurrentPrincipal, {ROUNDS}x{CALLS_PER_ROUND} sequential calls "
          f"per row, then {THROUGHPUT_S:g} s at concurrency {CONCURRENCY}\n")
    print(f"{'path':<34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s':>8}")
    for r in rows:
        print(f"{r['path']:<34} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['mean_ms']:>8.3f} "
              f"{r['throughput_rps']:>8.0f}")
    print(f"\nedge overhead, gRPC p50: {overhead['grpc_p50_ms']:+.3f} ms "
          f"(router-only Envoy: {overhead['grpc_p50_ms_router_only']:+.3f} ms; "
          f"Check on every call: {overhead['grpc_p50_ms_check_every_call']:+.3f} ms)")
    print(f"\nwhat each part of the edge costs (gRPC p50; the shipped edge without one part, "
          f"{ROUNDS}x{CALLS_PER_ROUND} calls each, interleaved)\n")
    print(f"{'edge':<48} {'p50 ms':>8} {'p99 ms':>8} {'part costs':>10}")
    for r in parts:
        cost = "" if r["part_cost_p50_ms"] is None else f"{r['part_cost_p50_ms']:+.3f}"
        print(f"{r['path']:<48} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {cost:>10}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "edge", "command": "make bench-edge",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                    "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"rounds": ROUNDS, "calls_per_round": CALLS_PER_ROUND,
                     "throughput_seconds": THROUGHPUT_S, "concurrency": CONCURRENCY},
        "rows": rows, "overhead": overhead, "parts": parts}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
