"""The sandbox service as a process of its own, with chosen settings: the service's secrets stay
out of reach, seccomp is what refuses ptrace (ICE_DISABLE_SECCOMP=1 turns only that off), a fork
bomb is contained and every process it made is reaped, a busy sandbox answers
RESOURCE_EXHAUSTED, and the zygote pool refills itself."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import textwrap
import time
from pathlib import Path

import grpc
import psutil
import pytest
from google.protobuf import json_format
from iceos.sandbox.v1 import sandbox_pb2

from tests.support.processes import ServiceProcess, wait_for
from tests.support.sandbox import (execute, limits, processes_of_uid, sandbox_service,
                                   zygotes)
from tests.support.stack import Tenant, create_tenant

SECRET = "s3cret-d0-not-leak-7f1c"
OK = sandbox_pb2.EXECUTION_STATUS_OK


def src(code: str) -> str:
    return textwrap.dedent(code).lstrip()


def result_of(response: sandbox_pb2.ExecuteResponse):  # type: ignore[no-untyped-def]
    assert response.status == OK, (response.error, response.stderr)
    return json_format.MessageToDict(response.result)


@pytest.fixture(scope="module")
def database(postgres) -> str:  # type: ignore[no-untyped-def]
    from tests.conftest import new_database
    return new_database(postgres)


@pytest.fixture(scope="module")
def owner(database: str) -> Tenant:
    return create_tenant(database)


@pytest.fixture(scope="module")
def secured(database: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Seccomp on, a secret in the service's environment, a pool of 3 zygotes."""
    with sandbox_service(database, tmp_path_factory.mktemp("secured"), ICE_DISABLE_SECCOMP="0",
                         ICEOS_SANDBOX_CONCURRENCY="2", ICEOS_TEST_SECRET=SECRET) as service:
        wait_for(lambda: len(zygotes(service)) == 3, 60, what="3 zygotes")
        yield service


@pytest.fixture(scope="module")
def unfiltered(database: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with sandbox_service(database, tmp_path_factory.mktemp("unfiltered"),
                         ICE_DISABLE_SECCOMP="1", ICEOS_SANDBOX_CONCURRENCY="1") as service:
        yield service


@pytest.fixture(scope="module")
def small(database: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One execution at a time, a 1 s queue, and lowered server limits."""
    with sandbox_service(database, tmp_path_factory.mktemp("small"),
                         ICEOS_SANDBOX_CONCURRENCY="1", ICEOS_SANDBOX_QUEUE_S="1",
                         ICEOS_SANDBOX_TIMEOUT_S="5", ICEOS_SANDBOX_MEMORY_MB="256",
                         ICEOS_SANDBOX_CPU_S="3") as service:
        yield service


def run(service: ServiceProcess, tenant: Tenant, **kwargs: object) -> sandbox_pb2.ExecuteResponse:
    with grpc.insecure_channel(service.address) as channel:
        return execute(channel, tenant, **kwargs)  # type: ignore[arg-type]


SNOOP = src("""
    import os

    def read(path):
        try:
            with open(path, "rb") as f:
                return f.read(1 << 20).decode("latin-1")
        except OSError as exc:
            return type(exc).__name__

    def main(inputs):
        seen = {"env": dict(os.environ), "proc1": read("/proc/1/environ"),
                "parent": read(f"/proc/{os.getppid()}/environ"),
                "self": read("/proc/self/environ")}
        if os.path.isdir("/proc"):
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    seen[pid] = read(f"/proc/{pid}/environ")
        return seen
""")


def test_the_services_environment_is_out_of_reach(secured, owner) -> None:  # type: ignore[no-untyped-def]
    assert SECRET in " ".join(f"{k}={v}" for k, v in
                              psutil.Process(secured.proc.pid).environ().items())
    response = run(secured, owner, source=SNOOP)
    found = result_of(response)
    text = json.dumps(found) + response.stdout + response.stderr
    assert SECRET not in text and "DATABASE_URL" not in text
    assert found["proc1"] == found["parent"] == "FileNotFoundError"
    # The zygotes themselves were started with an empty environment.
    for zygote in zygotes(secured):
        assert SECRET not in json.dumps(zygote.environ())


def test_without_seccomp_only_the_filter_is_gone(unfiltered, owner) -> None:  # type: ignore[no-untyped-def]
    code = src("""
        import ctypes, os, socket

        def main(inputs):
            libc = ctypes.CDLL(None, use_errno=True)
            traceme = libc.ptrace(0, 0, 0, 0)
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.settimeout(2)
                    s.connect(("127.0.0.1", inputs["port"]))
                    net = "connected"
            except OSError as exc:
                net = type(exc).__name__
            return {"traceme": traceme, "net": net, "uid": os.getuid(),
                    "proc": os.path.exists("/proc/1")}
    """)
    found = result_of(run(unfiltered, owner, source=code, inputs={"port": unfiltered.port}))
    assert found["traceme"] == 0  # the filter is what refuses ptrace with seccomp on
    # Still no network (empty network namespace), still unprivileged, still no /proc.
    assert found["net"] in ("OSError", "ConnectionRefusedError") and found["net"] != "connected"
    assert found["uid"] != 0 and found["proc"] is False


def test_a_process_that_leaves_the_group_is_still_killed(unfiltered, owner) -> None:  # type: ignore[no-untyped-def]
    # Without seccomp, setsid() is allowed, so the group kill cannot reach this process; the
    # kill of everything running as the execution's uid does.
    code = src("""
        import os, time

        def main(inputs):
            read, write = os.pipe()
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.write(write, str(os.getpid()).encode())
                    time.sleep(3600)
                os._exit(0)
            return {"escaped": int(os.read(read, 32)), "uid": os.getuid()}
    """)
    found = result_of(run(unfiltered, owner, source=code))
    assert found["escaped"] > 0  # it started, and told us its pid
    uid = int(found["uid"])
    wait_for(lambda: not processes_of_uid(uid), 20, what="the escaped process to be killed")


@pytest.mark.stress
def test_a_fork_bomb_is_contained_and_every_process_reaped(secured, owner) -> None:  # type: ignore[no-untyped-def]
    bounded = src("""
        import os, time

        def main(inputs):
            made = 0
            try:
                while True:
                    if os.fork() == 0:
                        time.sleep(3600)
                    made += 1
            except OSError as exc:
                return {"made": made, "error": type(exc).__name__, "uid": os.getuid()}
    """)
    found = result_of(run(secured, owner, source=bounded))
    assert found["error"] == "BlockingIOError" and found["made"] < 32
    wait_for(lambda: not processes_of_uid(int(found["uid"])), 20,
             what="the sleeping children to be killed")

    bomb = src("""
        import os

        def main(inputs):
            print(os.getuid(), flush=True)
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
    """)
    response = run(secured, owner, source=bomb, limit=limits(timeout_s=3))
    assert response.status == sandbox_pb2.EXECUTION_STATUS_TIMEOUT
    uid = int(response.stdout.split()[0])
    wait_for(lambda: not processes_of_uid(uid), 20, what="every bomb process to be gone")
    # Nothing is left under the service but its zygotes: no zombies, no orphans.
    def only_zygotes() -> bool:
        tree = psutil.Process(secured.proc.pid).children(recursive=True)
        return {p.pid for p in tree} == {z.pid for z in zygotes(secured)}
    wait_for(only_zygotes, 20, what="only zygotes under the service")
    assert result_of(run(secured, owner, source="def main(i):\n    return 'alive'\n")) == "alive"


def test_a_caller_that_gives_up_stops_the_execution(secured, owner) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        with grpc.insecure_channel(secured.address) as channel:
            execute(channel, owner, source="import time\n\ndef main(i):\n    time.sleep(60)\n",
                    timeout=1.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Killed now, not when its own 30 s limit passes.
    wait_for(lambda: not any(z.children() for z in zygotes(secured)), 10,
             what="the abandoned execution to be killed")
    assert result_of(run(secured, owner, source="def main(i):\n    return 3\n")) == 3


def test_a_killed_zygote_is_replaced_and_its_execution_fails_cleanly(secured, owner) -> None:  # type: ignore[no-untyped-def]
    wait_for(lambda: len(zygotes(secured)) == 3, 60, what="a full pool")
    before = {z.pid for z in zygotes(secured)}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(run, secured, owner,
                           source="import time\n\ndef main(i):\n    time.sleep(60)\n")
        busy = wait_for(lambda: [z for z in zygotes(secured) if z.children()], 30,
                        what="an execution to start")
        os.kill(busy[0].pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as info:
            call.result(timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_for(lambda: len(zygotes(secured)) == 3 and {z.pid for z in zygotes(secured)} != before,
             60, what="the pool to refill")
    assert busy[0].pid not in {z.pid for z in zygotes(secured)}
    assert result_of(run(secured, owner, source="def main(i):\n    return 2\n")) == 2


def test_a_busy_sandbox_waits_briefly_then_refuses(small, owner) -> None:  # type: ignore[no-untyped-def]
    sleeper = "import time\n\ndef main(i):\n    time.sleep(i)\n    return i\n"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        long = pool.submit(run, small, owner, source=sleeper, inputs=3)
        wait_for(lambda: any(z.children() for z in zygotes(small)), 30,
                 what="the first execution to start")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            run(small, owner, source=sleeper, inputs=0)
        waited = time.monotonic() - started
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry" in (info.value.details() or "")
        assert waited >= 0.9
        assert result_of(long.result(timeout=30)) == 3
    # A short wait is absorbed: the second call queues behind the first and runs.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(run, small, owner, source=sleeper, inputs=0.2)
        second = pool.submit(run, small, owner, source=sleeper, inputs=0.1)
        assert result_of(first.result(timeout=30)) == 0.2
        assert result_of(second.result(timeout=30)) == 0.1


def test_server_limits_come_from_the_environment(small, owner) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        run(small, owner, source="def main(i):\n    return 1\n", limit=limits(timeout_s=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum of 5s" in (info.value.details() or "")
    memory = run(small, owner,
                 source="def main(i):\n    return len(bytearray(300 * 1024 * 1024))\n")
    assert memory.status == sandbox_pb2.EXECUTION_STATUS_MEMORY_LIMIT
    assert "256 MiB" in memory.error.message


def test_the_service_stops_cleanly_and_takes_its_zygotes(database, owner,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    with sandbox_service(database, tmp_path) as service:
        wait_for(lambda: len(zygotes(service)) == 5, 60, what="the pool")
        pids = [z.pid for z in zygotes(service)]
        assert result_of(run(service, owner, source="def main(i):\n    return 1\n")) == 1
        assert service.stop() == 0
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 20, what="zygotes gone")
