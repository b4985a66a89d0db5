"""Start real service processes on loopback ports and wait for them to serve."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import REPO_ROOT
from services.stack.embedded import free_port

HEALTH_NAMES = {
    "registry": "iceos.registry.v1.RegistryService",
    "orchestrator": "iceos.orchestrator.v1.OrchestratorService",
    "sandbox": "iceos.sandbox.v1.SandboxService",
}


def health_status(address: str, service: str = "", timeout: float = 1.0) -> int | None:
    """The health status a server reports for `service`, or None if it does not answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout).status
        except grpc.RpcError:
            return None


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class ServiceProcess:
    """`python -m services.<name>` as a child process with its output in a log file."""

    name: str
    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> "ServiceProcess":
        env = dict(self.env)
        env[f"ICEOS_{self.name.upper()}_PORT"] = str(self.port)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"],
                                         env=env, cwd=REPO_ROOT, stdout=log,
                                         stderr=subprocess.STDOUT)
        if wait:
            self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 30.0) -> None:
        def serving() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   + self.logs()[-3000:])
            return health_status(self.address, HEALTH_NAMES[self.name]) == \
                health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, timeout, what=f"{self.name} SERVING")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
