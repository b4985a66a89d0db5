"""Sandbox latency and throughput, side by side in one run.

A trivial `main` executed (1) in-process — the floor, no isolation at all; (2) by spawning
`python3 -c` per call — the naive way; (3) through the sandbox service over gRPC with every limit
on (zygote fork, rlimits, uid drop, namespaces, seccomp). Then trivial WASM through the service
and in-process through the WASM tier, and Python throughput at concurrency 2 and 8. A health
check on the same channel shows what the transport alone costs; an authenticated Execute also
pays the interceptor (token check, audit row).

    make bench-sandbox      # or: python -m bench sandbox

Starts its own embedded Postgres (for authentication) and sandbox service; writes
bench/results/sandbox.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from iceos.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

from services.common import migrate
from services.common.convert import python_to_value
from services.common.settings import REPO_ROOT
from services.stack.embedded import EmbeddedPostgres, free_port

RESULTS = REPO_ROOT / "bench" / "results" / "sandbox.json"
SOURCE = "def main(inputs):\n    return {'ok': True, 'n': inputs['n'] + 1}\n"
INPUTS = {"n": 41}
ECHO = (REPO_ROOT / "examples" / "sandbox" / "echo.wat").read_bytes()
LATENCY_CALLS = 300
SPAWN_CALLS = 60
THROUGHPUT_CALLS = 240


def _stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(cuts[98], 3), "mean_ms": round(statistics.fmean(ms), 3)}


def _time(call: Callable[[], Any], n: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return _stats(samples)


def in_process() -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(SOURCE, "main.py", "exec"), namespace)
    return json.loads(json.dumps(namespace["main"](json.loads(json.dumps(INPUTS)))))


SPAWN_CODE = SOURCE + "import json, sys\nprint(json.dumps(main(json.loads(sys.argv[1]))))\n"
# The real interpreter binary (not a venv or pyenv shim, which would only make it slower).
PYTHON3 = getattr(sys, "_base_executable", sys.executable)


def spawn() -> Any:
    done = subprocess.run([PYTHON3, "-c", SPAWN_CODE, json.dumps(INPUTS)], capture_output=True,
                          check=True)
    return json.loads(done.stdout)


class Service:
    """An embedded Postgres and a sandbox service process with seccomp on."""

    def __init__(self, workdir: Path) -> None:
        from tests.support.processes import ServiceProcess
        from tests.support.sandbox import service_env
        from tests.support.stack import create_tenant

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.postgres = EmbeddedPostgres(workdir / "pgdata", free_port(),
                                             log_file=workdir / "postgres.log")
        self.postgres.start()
        url = self.postgres.create_database("bench")
        migrate.upgrade(url)
        self.tenant = create_tenant(url)
        self.service = ServiceProcess("sandbox", service_env(
            url, ICE_DISABLE_SECCOMP="0", ICEOS_SANDBOX_CONCURRENCY="8",
            ICEOS_SANDBOX_QUEUE_S="30", ICEOS_LOG_LEVEL="INFO"), workdir).start(timeout=60)
        self.channel = grpc.insecure_channel(self.service.address)
        self.stub = sandbox_pb2_grpc.SandboxServiceStub(self.channel)
        self.python_request = sandbox_pb2.ExecuteRequest(
            parent=self.tenant.parent, language=sandbox_pb2.LANGUAGE_PYTHON, source=SOURCE,
            inputs=python_to_value(INPUTS))
        self.wasm_request = sandbox_pb2.ExecuteRequest(
            parent=self.tenant.parent, language=sandbox_pb2.LANGUAGE_WASM, wasm_module=ECHO,
            inputs=python_to_value(INPUTS))
        self.metadata = self.tenant.md()
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        health = health_pb2_grpc.HealthStub(self.channel)
        self.health = lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10)

    def call(self, request: sandbox_pb2.ExecuteRequest) -> sandbox_pb2.ExecuteResponse:
        response = self.stub.Execute(request, metadata=self.metadata, timeout=60)
        if response.status != sandbox_pb2.EXECUTION_STATUS_OK:
            raise RuntimeError(f"execution failed: {response.error}")
        return response

    def isolation(self) -> str:
        for line in self.service.logs().splitlines():
            if "sandbox zygotes isolated" in line:
                return json.dumps(json.loads(line).get("isolation"))
        return "unknown"

    def close(self) -> None:
        self.channel.close()
        self.service.stop()
        self.postgres.stop()


def throughput(call: Callable[[], Any], concurrency: int, total: int) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        started = time.perf_counter()
        call()
        with lock:
            latencies.append(time.perf_counter() - started)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency * 2)))  # warm up
        latencies.clear()
        started = time.perf_counter()
        list(pool.map(one, range(total)))
        elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "executions": total,
            "per_second": round(total / elapsed, 1), **_stats(latencies)}


def wasm_in_process() -> dict[str, float]:
    """The WASM tier's own cost, without gRPC (module cached, as in the service)."""
    from services.sandbox.limits import RequestedLimits, resolve, server_maximum
    from services.sandbox.outcome import Job, Language
    from services.sandbox.wasm_tier import WasmTier
    from services.common.settings import SandboxLimits

    tier = WasmTier(workers=1)
    limits = resolve(RequestedLimits(), server_maximum(SandboxLimits()))
    job = Job(Language.WASM, INPUTS, wasm_module=ECHO)
    compiled = tier.compile(ECHO)

    def run() -> None:
        outcome = tier._run(compiled, json.dumps(INPUTS), "", limits)
        assert outcome.result == {"echo": INPUTS}, outcome

    try:
        return _time(run, LATENCY_CALLS, warmup=20)
    finally:
        del job
        tier.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="iceos-bench-sandbox-") as tmp:
        service = Service(Path(tmp))
        try:
            rows = {
                "python in-process (floor)": _time(in_process, LATENCY_CALLS, warmup=20),
                "grpc round trip (health check)": _time(service.health, LATENCY_CALLS,
                                                        warmup=20),
                "python3 -c per call (naive)": _time(spawn, SPAWN_CALLS),
                "python via sandbox service": _time(
                    lambda: service.call(service.python_request), LATENCY_CALLS, warmup=20),
                "wasm via sandbox service": _time(
                    lambda: service.call(service.wasm_request), LATENCY_CALLS, warmup=20),
                "wasm tier in-process": wasm_in_process(),
            }
            flows = [throughput(lambda: service.call(service.python_request), c,
                                THROUGHPUT_CALLS) for c in (2, 8)]
            isolation = service.isolation()
        finally:
            service.close()

    sandbox = rows["python via sandbox service"]["p50_ms"]
    naive = rows["python3 -c per call (naive)"]["p50_ms"]
    wasm = rows["wasm via sandbox service"]["p50_ms"]
    wasm_tier = rows["wasm tier in-process"]["p50_ms"]
    targets = {
        "python_sandbox_at_most_half_of_spawn": {
            "sandbox_p50_ms": sandbox, "spawn_p50_ms": naive,
            "ratio": round(sandbox / naive, 3), "met": sandbox <= naive / 2},
        "wasm_under_2ms": {"service_p50_ms": wasm, "tier_p50_ms": wasm_tier,
                           "met_through_service": wasm < 2.0, "met_in_tier": wasm_tier < 2.0},
    }
    print(f"\nsandbox latency ({os.cpu_count()} CPUs; isolation {isolation})\n")
    print(f"{'path':32} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for name, row in rows.items():
        print(f"{name:32} {row['n']:>5} {row['p50_ms']:>9.3f} {row['p99_ms']:>9.3f} "
              f"{row['mean_ms']:>9.3f}")
    print(f"\n{'python throughput':32} {'conc.':>5} {'exec/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for flow in flows:
        print(f"{'python via sandbox service':32} {flow['concurrency']:>5} "
              f"{flow['per_second']:>9.1f} {flow['p50_ms']:>9.3f} {flow['p99_ms']:>9.3f}")
    met = targets["python_sandbox_at_most_half_of_spawn"]["met"]
    print(f"\ntarget: sandbox p50 ≤ ½ spawn p50: {sandbox:.2f} ms vs {naive:.2f} ms "
          f"(ratio {sandbox / naive:.2f}) → {'met' if met else 'MISSED'}")
    print(f"target: trivial WASM < 2 ms: through the service {wasm:.2f} ms → "
          f"{'met' if wasm < 2.0 else 'MISSED'}; in the WASM tier {wasm_tier:.2f} ms → "
          f"{'met' if wasm_tier < 2.0 else 'MISSED'}\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "sandbox", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "isolation": isolation,
        "latency": rows, "throughput": flows, "targets": targets}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")

