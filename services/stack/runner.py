"""The local stack's process supervisor (see services/stack/__main__.py)."""

from __future__ import annotations

import ctypes
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from services.common import migrate
from services.common.settings import (DEFAULT_PORTS, REPO_ROOT, ConfigError,
                                      normalize_database_url, redact_url)

from . import envoy
from .embedded import EmbeddedPostgres, EmbeddedRedis, StackError, port_in_use

SERVICES = ("registry", "orchestrator", "sandbox")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _int_env(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a port number") from None


@dataclass
class StackConfig:
    home: Path
    edge_port: int
    admin_port: int
    pg_port: int
    redis_port: int
    service_ports: dict[str, int]
    database_url: str | None
    redis_url: str | None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "StackConfig":
        home = Path(env.get("ICEOS_HOME") or REPO_ROOT / ".iceos").resolve()
        return cls(
            home=home,
            edge_port=_int_env(env, "ICEOS_EDGE_PORT", 8080),
            admin_port=_int_env(env, "ICEOS_EDGE_ADMIN_PORT", 9901),
            pg_port=_int_env(env, "ICEOS_PG_PORT", 54329),
            redis_port=_int_env(env, "ICEOS_REDIS_PORT", 63799),
            service_ports={s: _int_env(env, f"ICEOS_{s.upper()}_PORT", DEFAULT_PORTS[s])
                           for s in SERVICES},
            database_url=normalize_database_url(env["DATABASE_URL"])
            if env.get("DATABASE_URL") else None,
            redis_url=env.get("REDIS_URL") or None,
        )


def write_stack_env(home: Path, database_url: str, redis_url: str, edge_url: str) -> Path:
    """$ICEOS_HOME/stack.env: how to reach this stack from a shell (`source` it, or `set -a`
    first to export it to commands such as `bootstrap --rotate`)."""
    path = home / "stack.env"
    path.write_text(f"DATABASE_URL={shlex.quote(database_url)}\n"
                    f"REDIS_URL={shlex.quote(redis_url)}\n"
                    f"ICEOS_EDGE_URL={shlex.quote(edge_url)}\n"
                    f"ICEOS_HOME={shlex.quote(str(home))}\n")
    return path


@dataclass
class Stack:
    config: StackConfig
    env: dict[str, str]
    out: object = sys.stdout
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _print_lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, source: str, line: str) -> None:
        with self._print_lock:
            print(f"{source:<12} | {line}", file=self.out, flush=True)  # type: ignore[arg-type]

    def _check_ports(self) -> None:
        wanted = {"edge (ICEOS_EDGE_PORT)": self.config.edge_port,
                  "edge admin (ICEOS_EDGE_ADMIN_PORT)": self.config.admin_port}
        for name, port in self.config.service_ports.items():
            wanted[f"{name} (ICEOS_{name.upper()}_PORT)"] = port
        for what, port in wanted.items():
            if port_in_use(port):
                raise StackError(f"port {port} for {what} is taken; stop what uses it or set "
                                 "the variable to a free port")

    def start(self) -> None:
        cfg = self.config
        self._check_ports()
        cfg.home.mkdir(parents=True, exist_ok=True)
        database_url = cfg.database_url
        if database_url is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.postgres = EmbeddedPostgres(cfg.home / "pgdata", cfg.pg_port,
                                                 log_file=cfg.home / "postgres.log")
            self.say("postgres", f"starting embedded Postgres on 127.0.0.1:{cfg.pg_port} "
                                 f"(data in {cfg.home / 'pgdata'})")
            self.postgres.start()
            database_url = self.postgres.url
        redis_url = cfg.redis_url
        if redis_url is None:
            self.redis = EmbeddedRedis(cfg.redis_port, cfg.home / "redis")
            self.say("redis", f"starting {self.redis.binary()} on 127.0.0.1:{cfg.redis_port}")
            self.redis.start()
            redis_url = self.redis.url

        self.say("migrate", f"migrating {redact_url(database_url)}")
        migrate.upgrade(database_url)
        self._bootstrap(database_url)

        write_stack_env(cfg.home, database_url, redis_url, f"http://localhost:{cfg.edge_port}")

        service_env = dict(self.env, DATABASE_URL=database_url, REDIS_URL=redis_url,
                           ICEOS_RUN_MIGRATIONS="1", ICEOS_HOME=str(cfg.home),
                           PYTHONUNBUFFERED="1")
        service_env.setdefault("ICEOS_SERVICE_KEY", self._service_key())
        for name, port in cfg.service_ports.items():
            service_env[f"ICEOS_{name.upper()}_PORT"] = str(port)
        for name in SERVICES:
            self._spawn(name, [sys.executable, "-m", f"services.{name}"], service_env)

        # CORS origins, rate limits and the verdict cache come from ICEOS_* variables.
        edge = envoy.EdgeConfig.from_env(
            self.env, edge_port=cfg.edge_port, admin_port=cfg.admin_port,
            upstreams={n: ("127.0.0.1", p) for n, p in cfg.service_ports.items()})
        config_path = cfg.home / "envoy.yaml"
        config_path.write_text(envoy.render(edge))
        self._spawn("envoy", envoy.command(config_path), self.env)

    def _service_key(self) -> str:
        """The key services share to sign service tokens: made once, kept in $ICEOS_HOME."""
        path = self.config.home / "service-key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return path.read_text().strip()

    def _bootstrap(self, database_url: str) -> None:
        token_file = self.config.home / "admin-token"
        env = dict(self.env, DATABASE_URL=database_url, ICEOS_HOME=str(self.config.home))
        result = subprocess.run([sys.executable, "-m", "services.registry", "bootstrap"],
                                env=env, capture_output=True, text=True)
        if result.returncode == 0:
            self.say("bootstrap", f"created the default organization, project and an admin "
                                  f"token, saved to {token_file} (mode 0600)")
            for line in result.stdout.splitlines()[-1:]:
                self.say("bootstrap", f"admin token (shown once): {line}")
        elif result.returncode == 3:
            where = token_file if token_file.exists() else "the token saved at first start"
            self.say("bootstrap", f"already bootstrapped; admin token: {where}")
        else:
            raise StackError(f"bootstrap failed: {result.stderr.strip()}")

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent, cwd=REPO_ROOT)
        self.children[name] = proc

        def pump() -> None:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                self.say(name, raw.decode(errors="replace").rstrip())

        threading.Thread(target=pump, name=f"log-{name}", daemon=True).start()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.config.edge_port}/readyz"
        while time.monotonic() < deadline:
            if self.exited():
                return False
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.25)
        return False

    def exited(self) -> str | None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, proc in self.children.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("stack", f"{name} did not stop in time; killing it")
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()


def main() -> int:
    env = dict(os.environ)
    try:
        config = StackConfig.from_env(env)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stack = Stack(config, env)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        stack.start()
        if stack.wait_ready():
            stack.say("stack", f"iceOS is ready: edge http://localhost:{config.edge_port} "
                               f"(/healthz, /readyz); environment in {config.home / 'stack.env'}")
        elif not stopping.is_set():
            dead = stack.exited()
            stack.say("stack", f"not ready within 60 s{f': {dead} exited' if dead else ''}")
            code = 1
            stopping.set()
        while not stopping.wait(0.5):
            dead = stack.exited()
            if dead:
                stack.say("stack", f"{dead} exited unexpectedly; stopping the stack")
                code = 1
                break
    except (StackError, migrate.SchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:  # noqa: BLE001 - a clear last word instead of a traceback
        print(f"error: the stack failed to start: {exc}", file=sys.stderr)
        code = 1
    finally:
        stack.say("stack", "stopping")
        stack.stop()
        stack.say("stack", "stopped")
    return code
