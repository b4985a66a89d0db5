"""Registry benchmark, in one run:

1. Blueprint validation time for 10, 100 and 1,000 nodes (bench/registry/blueprints.py: a
   chain of llm, tool, code and condition nodes, each reading the one before). "cold" validates
   a blueprint never seen before (its CEL and templates are new to the caches); "warm" validates
   the same blueprint again. Growth should be about linear; the target is < 100 ms at 1,000.
2. Get and List latency (p50, p99) and throughput against a live stack, side by side: gRPC
   direct to the registry, gRPC through the edge, JSON through the edge.

    make bench-registry        # or: .venv/bin/python -m bench.registry

Writes bench/results/registry.json. The client is Python on the same 2 cores as the stack, so
throughput is client-bound: compare rows with each other.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from iceos.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.blueprint.validate import validate_blueprint
from services.common.principal import Role
from services.registry.references import builtin_info
from services.stack.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from tests.support.stack import LiveStack, create_tenant

from .blueprints import chain, node_count

RESULTS = Path(__file__).resolve().parents[1] / "results" / "registry.json"
SIZES = (10, 100, 1000)
VALIDATION_SAMPLES = int(os.environ.get("BENCH_REGISTRY_SAMPLES", "7"))
CALLS = int(os.environ.get("BENCH_REGISTRY_CALLS", "300"))
THROUGHPUT_S = float(os.environ.get("BENCH_REGISTRY_SECONDS", "3"))
CONCURRENCY = 8
BLUEPRINTS = 60


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


def bench_validation() -> list[dict[str, object]]:
    rows = []
    for size in SIZES:
        cold, warm = [], []
        for sample in range(VALIDATION_SAMPLES):
            blueprint = chain(size, salt=f"-{sample}-{time.time_ns()}")
            started = time.perf_counter()
            violations = validate_blueprint(blueprint, lookup=builtin_info)
            cold.append(time.perf_counter() - started)
            assert violations == [], violations[:3]
            started = time.perf_counter()
            validate_blueprint(blueprint, lookup=builtin_info)
            warm.append(time.perf_counter() - started)
        rows.append({"nodes": node_count(chain(size)), "cold_median_ms":
                     round(statistics.median(cold) * 1000, 2),
                     "cold_max_ms": round(max(cold) * 1000, 2),
                     "warm_median_ms": round(statistics.median(warm) * 1000, 2),
                     "us_per_node_cold": round(statistics.median(cold) * 1e6 / size, 1)})
    return rows


def _latency(call: Callable[[], object], calls: int) -> list[float]:
    for _ in range(20):
        call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def _throughput(make_call: Callable[[], Callable[[], object]], seconds: float) -> float:
    deadline = time.perf_counter() + seconds

    def worker() -> int:
        call, done = make_call(), 0
        while time.perf_counter() < deadline:
            call()
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        total = sum(pool.map(lambda _: worker(), range(CONCURRENCY)))
    return round(total / (time.perf_counter() - started), 1)


def bench_api(workdir: Path) -> list[dict[str, object]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        postgres = EmbeddedPostgres(workdir / "pgdata", free_port(),
                                    log_file=workdir / "postgres.log")
    postgres.start()
    redis = EmbeddedRedis(free_port(), workdir / "redis")
    redis.start()
    stack = LiveStack(database_url=postgres.url, redis_url=redis.url, workdir=workdir / "stack")
    try:
        stack.start()
        tenant = create_tenant(postgres.url)
        md = tenant.md(Role.VIEWER)
        with stack.channel() as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            for i in range(BLUEPRINTS):
                stub.CreateBlueprint(registry_pb2.CreateBlueprintRequest(
                    parent=tenant.parent, blueprint_id=f"bp-{i:03d}", blueprint=chain(20)),
                    metadata=tenant.md(Role.EDITOR))
        name = f"{tenant.parent}/blueprints/bp-007"
        get_request = registry_pb2.GetBlueprintRequest(name=name)
        list_request = registry_pb2.ListBlueprintsRequest(parent=tenant.parent, page_size=50)
        edge_host, edge_port = stack.edge.address.split(":") if stack.edge else ("", "0")

        def grpc_call(target: str, method: str) -> Callable[[], Callable[[], object]]:
            def make() -> Callable[[], object]:
                stub = registry_pb2_grpc.RegistryServiceStub(grpc.insecure_channel(target))
                if method == "get":
                    return lambda: stub.GetBlueprint(get_request, metadata=md, timeout=10)
                return lambda: stub.ListBlueprints(list_request, metadata=md, timeout=10)
            return make

        def json_call(method: str) -> Callable[[], Callable[[], object]]:
            path = f"/v1/{name}" if method == "get" else \
                f"/v1/{tenant.parent}/blueprints?pageSize=50"
            headers = tenant.headers(Role.VIEWER)

            def make() -> Callable[[], object]:
                connection = http.client.HTTPConnection(edge_host, int(edge_port), timeout=10)

                def call() -> object:
                    connection.request("GET", path, headers=headers)
                    response = connection.getresponse()
                    body = response.read()
                    assert response.status == 200, body[:200]
                    return body
                return call
            return make

        rows = []
        targets = [("gRPC direct", lambda m: grpc_call(stack.address("registry"), m)),
                   ("gRPC via edge", lambda m: grpc_call(stack.edge.address, m)),
                   ("JSON via edge", json_call)]
        for method, label in (("get", "GetBlueprint"), ("list", "ListBlueprints (50)")):
            for path_label, factory in targets:
                make = factory(method)
                times = _latency(make(), CALLS)
                rows.append({"call": label, "path": path_label, "p50_ms": _ms(times, 0.5),
                             "p99_ms": _ms(times, 0.99),
                             "throughput_rps": _throughput(make, THROUGHPUT_S)})
        return rows
    finally:
        stack.stop()
        redis.stop()
        postgres.stop()


def main() -> None:
    print("blueprint validation (in process)")
    validation = bench_validation()
    print(f"{'nodes':>6} {'cold median ms':>15} {'cold max ms':>12} {'warm median ms':>15}"
          f" {'µs/node cold':>13}")
    for row in validation:
        print(f"{row['nodes']:>6} {row['cold_median_ms']:>15} {row['cold_max_ms']:>12} "
              f"{row['warm_median_ms']:>15} {row['us_per_node_cold']:>13}")
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        api = bench_api(Path(tmp))
    print("\nGet / List (60 blueprints of 20 nodes; sequential latency, "
          f"{CONCURRENCY}-way throughput)")
    print(f"{'call':<20} {'path':<15} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for row in api:
        print(f"{row['call']:<20} {row['path']:<15} {row['p50_ms']:>8} {row['p99_ms']:>8} "
              f"{row['throughput_rps']:>8}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "registry", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "validation": validation, "api": api}, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
