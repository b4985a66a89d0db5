"""`make run` end to end: `python -m services.stack` on embedded Postgres and Redis comes up,
answers /readyz and a first call, stops cleanly leaving no process, and restarts with its data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from services.common.settings import REPO_ROOT
from services.stack.embedded import free_port
from tests.support.processes import wait_for


def _http(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _start(home: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("ICEOS_")}
    env.update(ICEOS_HOME=str(home), **{k: str(v) for k, v in ports.items()})
    return subprocess.Popen([sys.executable, "-m", "services.stack"], env=env, cwd=REPO_ROOT,
                            stdout=open(home / "stack.log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_stack_starts_serves_stops_and_restarts_with_its_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    ports = {"ICEOS_EDGE_PORT": free_port(), "ICEOS_EDGE_ADMIN_PORT": free_port(),
             "ICEOS_PG_PORT": free_port(), "ICEOS_REDIS_PORT": free_port(),
             "ICEOS_REGISTRY_PORT": free_port(), "ICEOS_ORCHESTRATOR_PORT": free_port(),
             "ICEOS_SANDBOX_PORT": free_port()}
    edge = f"http://127.0.0.1:{ports['ICEOS_EDGE_PORT']}"

    stack = _start(home, ports)
    try:
        wait_for(lambda: _http(edge + "/readyz")[0] == 200, 60, interval=0.25,
                 what="/readyz 200")
        assert _http(edge + "/healthz")[0] == 200
        token_file = home / "admin-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        status, body = _http(edge + "/v1/principal", token)
        assert status == 200 and json.loads(body)["role"] == "ROLE_ADMIN"
        env_file = (home / "stack.env").read_text()
        assert f"ICEOS_EDGE_URL=http://localhost:{ports['ICEOS_EDGE_PORT']}" in env_file
        sourced = subprocess.run(["bash", "-c", f"source {home / 'stack.env'} && "
                                  "psql \"$DATABASE_URL\" -Atc 'select count(*) from projects'"],
                                 capture_output=True, text=True)
        assert sourced.returncode == 0 and sourced.stdout.strip() == "1", sourced.stderr
        children = _descendants(stack.pid)
        assert len(children) >= 6  # postgres, redis, three services, envoy
    finally:
        stack.send_signal(signal.SIGTERM)
        assert stack.wait(60) == 0
    leftovers = [pid for pid in children if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert leftovers == []

    # A second start reuses the data: the same token still works, no second bootstrap.
    stack = _start(home, ports)
    try:
        wait_for(lambda: _http(edge + "/readyz")[0] == 200, 60, interval=0.25,
                 what="/readyz 200 after restart")
        assert _http(edge + "/v1/principal", token)[0] == 200
        assert "already bootstrapped" in (home / "stack.log").read_text()
    finally:
        stack.send_signal(signal.SIGTERM)
        assert stack.wait(60) == 0


def test_stack_refuses_a_taken_edge_port(tmp_path: Path) -> None:
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ICEOS_")}
        env.update(ICEOS_HOME=str(tmp_path), ICEOS_EDGE_PORT=str(port))
        result = subprocess.run([sys.executable, "-m", "services.stack"], env=env,
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {port} for edge (ICEOS_EDGE_PORT) is taken" in result.stderr


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints_need_no_token(stack, path: str) -> None:  # type: ignore[no-untyped-def]
    assert stack.edge.http_status(path) == 200
