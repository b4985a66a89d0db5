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


def router_only_envoy(upstreams: dict[str, tuple[str, int]], workdir: Path) -> tuple[
        subprocess.Popen[bytes], str]:
    """The shipped config with every HTTP filter but the router removed."""
    port = free_port()
    config = yaml.safe_load(envoy.render(envoy.EdgeConfig(
        edge_port=port, admin_port=free_port(), upstreams=upstreams,
        listen_address="127.0.0.1")))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    manager["typed_config"]["http_filters"] = [
        f for f in manager["typed_config"]["http_filters"]
        if f["name"] == "envoy.filters.http.router"]
    manager["typed_config"].pop("local_reply_config")
    path = workdir / "router-only.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(workdir / "router-only.log", "ab")
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


def measure(targets: dict[str, GrpcTarget | JsonTarget]) -> list[dict[str, object]]:
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
    rows = []
    for name, target in targets.items():
        rps = asyncio.run(target.load(THROUGHPUT_S)) / THROUGHPUT_S
        rows.append({"path": name, "protocol": "gRPC" if isinstance(target, GrpcTarget)
                     else "JSON", "p50_ms": percentile(samples[name], 0.50) * 1000,
                     "p99_ms": percentile(samples[name], 0.99) * 1000,
                     "mean_ms": statistics.fmean(samples[name]) * 1000,
                     "calls": len(samples[name]), "throughput_rps": rps})
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
        bare = None
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
            bare, bare_address = router_only_envoy(live.edge.upstreams, work)
            token = create_tenant(postgres.url).tokens[Role.VIEWER]
            probe = GrpcTarget(bare_address, token)
            wait_for(lambda: _ok(probe.call), 30, what="router-only Envoy")
            probe.close()
            targets = {
                "gRPC direct (registry port)": GrpcTarget(live.address("registry"), token),
                "gRPC via Envoy, router only": GrpcTarget(bare_address, token),
                "gRPC via edge, Check every call": GrpcTarget(uncached.address, token),
                "gRPC via edge": GrpcTarget(live.edge.address, token),
                "JSON via edge, Check every call": JsonTarget(uncached.address, token),
                "JSON via edge": JsonTarget(live.edge.address, token),
            }
            rows = measure(targets)
        finally:
            for target in targets.values():
                target.close()
            if bare is not None:
                bare.terminate()
                bare.wait()
            for edge in extra:
                edge.stop()
            if live is not None:
                live.stop()
            redis.stop()
            postgres.stop()
    report(rows)
    return 0


def _ok(call: Callable[[], None]) -> bool:
    try:
        call()
        return True
    except grpc.RpcError:
        return False


def report(rows: list[dict[str, object]]) -> None:
    by = {r["path"]: r for r in rows}
    direct = by["gRPC direct (registry port)"]
    overhead = {
        "grpc_p50_ms": by["gRPC via edge"]["p50_ms"] - direct["p50_ms"],  # type: ignore[operator]
        "grpc_p99_ms": by["gRPC via edge"]["p99_ms"] - direct["p99_ms"],  # type: ignore[operator]
        "grpc_p50_ms_router_only": by["gRPC via Envoy, router only"]["p50_ms"]  # type: ignore[operator]
        - direct["p50_ms"],
        "grpc_p50_ms_check_every_call": by["gRPC via edge, Check every call"]["p50_ms"]  # type: ignore[operator]
        - direct["p50_ms"],
        "json_p50_ms_vs_grpc_direct": by["JSON via edge"]["p50_ms"] - direct["p50_ms"],  # type: ignore[operator]
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "edge", "command": "make bench-edge",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                    "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"rounds": ROUNDS, "calls_per_round": CALLS_PER_ROUND,
                     "throughput_seconds": THROUGHPUT_S, "concurrency": CONCURRENCY},
        "rows": rows, "overhead": overhead}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
