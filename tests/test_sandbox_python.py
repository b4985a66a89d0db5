"""Python in the sandbox, through the live stack (seccomp on): results round-trip, every limit
reports its own status, the code cannot reach the network, the platform's environment, other
processes or other executions' files, and bad requests are clear INVALID_ARGUMENT errors."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import textwrap
import urllib.error
import urllib.request

import grpc
import pytest
from google.protobuf import json_format
from iceos.sandbox.v1 import sandbox_pb2

from services.common.principal import Role
from tests.support.errors import violation_descriptions
from tests.support.sandbox import execute, limits

OK = sandbox_pb2.EXECUTION_STATUS_OK
ERROR = sandbox_pb2.EXECUTION_STATUS_ERROR


def src(code: str) -> str:
    return textwrap.dedent(code).lstrip()


def result_of(response: sandbox_pb2.ExecuteResponse):  # type: ignore[no-untyped-def]
    assert response.status == OK, (response.error, response.stderr)
    return json_format.MessageToDict(response.result)


@pytest.fixture
def sandbox(stack):  # type: ignore[no-untyped-def]
    with stack.channel("sandbox") as channel:
        yield channel


def test_round_trip_of_inputs_outputs_and_usage(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    code = src("""
        import os, sys

        def main(inputs):
            print("hello from main")
            print("careful", file=sys.stderr)
            return {"sum": inputs["a"] + sum(inputs["b"]), "text": inputs["s"].upper(),
                    "types": [type(inputs[k]).__name__ for k in ("a", "f", "n", "t")],
                    "key": os.environ.get("ICEOS_IDEMPOTENCY_KEY"),
                    "env": sorted(os.environ)}
    """)
    response = execute(sandbox, tenant, source=code, idempotency_key="run-7/node-a/1",
                       inputs={"a": 2, "b": [1, 2, 3], "s": "héllo", "f": 1.5, "n": None,
                               "t": True})
    assert result_of(response) == {
        "sum": 8, "text": "HÉLLO", "types": ["int", "float", "NoneType", "bool"],
        "key": "run-7/node-a/1",
        "env": ["HOME", "ICEOS_IDEMPOTENCY_KEY", "LANG", "PATH", "TMPDIR"]}
    assert response.stdout == "hello from main\n"
    assert response.stderr == "careful\n"
    assert not response.stdout_truncated and not response.stderr_truncated
    assert response.usage.wall_time.ToNanoseconds() > 0
    assert response.usage.cpu_time.ToNanoseconds() > 0
    assert response.usage.peak_memory_bytes > 1024 * 1024


def test_no_inputs_is_none_and_async_main_works(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    code = "async def main(inputs):\n    return inputs is None\n"
    assert result_of(execute(sandbox, tenant, source=code)) is True


@pytest.mark.parametrize("code, limit, status, error_type", [
    ("def main(inputs):\n    while True:\n        pass\n", limits(timeout_s=1.5),
     sandbox_pb2.EXECUTION_STATUS_TIMEOUT, "Timeout"),
    ("import time\n\ndef main(inputs):\n    time.sleep(3600)\n", limits(timeout_s=1),
     sandbox_pb2.EXECUTION_STATUS_TIMEOUT, "Timeout"),
    ("def main(inputs):\n    while True:\n        pass\n", limits(timeout_s=25, cpu_s=1),
     sandbox_pb2.EXECUTION_STATUS_CPU_LIMIT, "CpuLimit"),
    ("def main(inputs):\n    block = bytearray(2 * 1024 ** 3)\n    return len(block)\n", None,
     sandbox_pb2.EXECUTION_STATUS_MEMORY_LIMIT, "MemoryError"),
    ("import os, signal\n\ndef main(inputs):\n    os.kill(os.getpid(), signal.SIGTERM)\n", None,
     sandbox_pb2.EXECUTION_STATUS_KILLED, "Killed"),
    ("import ctypes\n\ndef main(inputs):\n    return ctypes.string_at(0)\n", None,
     sandbox_pb2.EXECUTION_STATUS_KILLED, "Killed"),
], ids=["infinite-loop", "never-returns", "cpu-spin", "allocate-2gb", "sigterm", "segfault"])
def test_each_limit_reports_its_own_status(sandbox, tenant, code, limit, status,  # type: ignore[no-untyped-def]
                                           error_type) -> None:
    response = execute(sandbox, tenant, source=code, limit=limit)
    assert response.status == status, (response.error, response.stderr)
    assert response.error.type == error_type
    if status == sandbox_pb2.EXECUTION_STATUS_CPU_LIMIT:
        assert response.usage.cpu_time.ToNanoseconds() >= 0.9e9
    if status == sandbox_pb2.EXECUTION_STATUS_TIMEOUT:
        assert response.usage.wall_time.ToNanoseconds() >= 0.9e9
    if status == sandbox_pb2.EXECUTION_STATUS_MEMORY_LIMIT:
        assert response.error.line == 2 and 'File "main.py", line 2' in response.error.traceback
    if status == sandbox_pb2.EXECUTION_STATUS_KILLED:
        assert ("SIGTERM" in response.error.message) or ("SIGSEGV" in response.error.message)


def test_a_lowered_memory_limit_applies(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    code = "def main(inputs):\n    return len(bytearray(200 * 1024 * 1024))\n"
    assert result_of(execute(sandbox, tenant, source=code)) == 200 * 1024 * 1024
    low = execute(sandbox, tenant, source=code, limit=limits(memory_mb=100))
    assert low.status == sandbox_pb2.EXECUTION_STATUS_MEMORY_LIMIT


def test_a_1gb_file_write_is_refused(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    code = src("""
        import os

        def main(inputs):
            chunk = b"0" * (1 << 20)
            try:
                with open("big.bin", "wb") as f:
                    for _ in range(1024):
                        f.write(chunk)
            except OSError as exc:
                return {"error": str(exc), "size": os.path.getsize("big.bin")}
            return {"error": None, "size": os.path.getsize("big.bin")}
    """)
    found = result_of(execute(sandbox, tenant, source=code))
    assert "File too large" in found["error"]
    assert found["size"] <= 64 * 1024 * 1024


def test_no_network_not_even_loopback_or_postgres(sandbox, tenant, postgres) -> None:  # type: ignore[no-untyped-def]
    pg_port = postgres.port
    with socket.create_connection(("127.0.0.1", pg_port), timeout=5):
        pass  # Postgres is there for the host
    code = src("""
        import socket

        def attempt(family, address, kind=socket.SOCK_STREAM):
            try:
                with socket.socket(family, kind) as s:
                    s.settimeout(2)
                    s.connect(address)
                    return "connected"
            except OSError as exc:
                return type(exc).__name__

        def main(inputs):
            return {
                "postgres": attempt(socket.AF_INET, ("127.0.0.1", inputs["port"])),
                "loopback": attempt(socket.AF_INET, ("127.0.0.1", 80)),
                "ipv6": attempt(socket.AF_INET6, ("::1", inputs["port"])),
                "udp": attempt(socket.AF_INET, ("8.8.8.8", 53), socket.SOCK_DGRAM),
                "netlink": attempt(socket.AF_NETLINK, (0, 0), socket.SOCK_RAW),
            }
    """)
    found = result_of(execute(sandbox, tenant, source=code, inputs={"port": pg_port}))
    assert set(found.values()) == {"PermissionError"}, found


def test_platform_environment_and_files_are_not_visible(stack, sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    code = src("""
        import os

        def read(path):
            try:
                with open(path, "rb") as f:
                    return f.read(4096).decode("latin-1")
            except OSError as exc:
                return type(exc).__name__

        def main(inputs):
            return {"proc1": read("/proc/1/environ"), "self": read("/proc/self/environ"),
                    "parent": read(f"/proc/{os.getppid()}/environ"),
                    "repo": os.path.exists(inputs["repo"]), "root": sorted(os.listdir("/")),
                    "uid": os.getuid(), "env": dict(os.environ)}
    """)
    from services.common.settings import REPO_ROOT
    response = execute(sandbox, tenant, source=code, inputs={"repo": str(REPO_ROOT)})
    found = result_of(response)
    assert found["proc1"] == found["self"] == found["parent"] == "FileNotFoundError"
    assert found["repo"] is False
    assert "proc" not in found["root"] and "home" not in found["root"]
    assert found["uid"] != 0
    text = json.dumps(found)
    assert stack.database_url not in text and "DATABASE_URL" not in text


def test_ptrace_is_refused(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    code = src("""
        import ctypes, os

        def main(inputs):
            libc = ctypes.CDLL(None, use_errno=True)
            traceme = libc.ptrace(0, 0, 0, 0)
            traceme_errno = ctypes.get_errno()
            attach = libc.ptrace(16, os.getppid(), 0, 0)
            return [traceme, traceme_errno, attach, ctypes.get_errno()]
    """)
    assert result_of(execute(sandbox, tenant, source=code)) == [-1, 1, -1, 1]  # EPERM


def test_one_execution_cannot_see_anothers_files(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    write = src("""
        import os

        def main(inputs):
            with open("secret.txt", "w") as f:
                f.write("tenant A's secret")
            return {"path": os.path.abspath("secret.txt"), "cwd": os.getcwd()}
    """)
    look = src("""
        import os

        def main(inputs):
            try:
                with open(inputs["path"]) as f:
                    seen = f.read()
            except OSError as exc:
                seen = type(exc).__name__
            return {"seen": seen, "cwd": os.getcwd(), "mine": os.listdir("."),
                    "tmp": os.listdir("/tmp") if os.access("/tmp", os.R_OK) else "unreadable"}
    """)
    written = result_of(execute(sandbox, tenant, source=write))
    for _ in range(3):  # whichever zygote serves it
        found = result_of(execute(sandbox, tenant, source=look, inputs=written))
        assert found["seen"] in ("FileNotFoundError", "PermissionError")
        assert found["cwd"] != written["cwd"]
        assert found["mine"] == []
        assert found["tmp"] == "unreadable"


def test_concurrent_executions_stay_isolated(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    code = src("""
        import os, time

        COUNTER = []

        def main(inputs):
            started = time.time()
            COUNTER.append(inputs["n"])
            with open("mine.txt", "w") as f:
                f.write(str(inputs["n"]))
            time.sleep(0.5)
            with open("mine.txt") as f:
                back = int(f.read())
            return {"n": inputs["n"], "back": back, "counter": COUNTER,
                    "files": os.listdir("."), "uid": os.getuid(),
                    "span": [started, time.time()]}
    """)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(
            lambda n: result_of(execute(sandbox, tenant, source=code, inputs={"n": n})),
            range(4)))
    for n, found in enumerate(results):
        assert found == {"n": n, "back": n, "counter": [n], "files": ["mine.txt"],
                         "uid": found["uid"], "span": found["span"]}
    overlapping = [(a, b) for a in results for b in results if a is not b
                   and a["span"][0] < b["span"][1] and b["span"][0] < a["span"][1]]
    assert overlapping  # they did run at the same time
    for a, b in overlapping:
        assert a["uid"] != b["uid"]  # and each as a uid of its own


def test_threads_and_subprocesses_work_inside(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    code = src("""
        import subprocess, threading

        def main(inputs):
            seen = []
            t = threading.Thread(target=lambda: seen.append("thread"))
            t.start()
            t.join()
            echo = subprocess.run(["echo", "child"], capture_output=True, text=True)
            return seen + [echo.stdout.strip()]
    """)
    assert result_of(execute(sandbox, tenant, source=code)) == ["thread", "child"]


@pytest.mark.parametrize("code, error_type, line, fragment", [
    ("def main(inputs):\n    return (1,\n", "SyntaxError", 2, "was never closed"),
    ("x = 1\n", "MainNotFound", 0, "defines no function main(inputs)"),
    ("def main(inputs):\n    return {1, 2}\n", "NonJSONResult", 0, "not JSON"),
    ("def main(inputs):\n    return float('nan')\n", "NonJSONResult", 0, "not JSON"),
    ("import os\n\ndef main(inputs):\n    os._exit(3)\n", "Exit", 0, "status 3"),
    ("import sys\n\ndef main(inputs):\n    sys.exit(4)\n", "SystemExit", 4, "4"),
], ids=["syntax-error", "no-main", "set-result", "nan-result", "os-exit", "sys-exit"])
def test_code_errors_are_error_results(sandbox, tenant, code, error_type, line,  # type: ignore[no-untyped-def]
                                       fragment) -> None:
    response = execute(sandbox, tenant, source=code)
    assert response.status == ERROR
    assert response.error.type == error_type
    assert response.error.line == line
    assert fragment in response.error.message
    if error_type == "SyntaxError":
        assert 'File "main.py", line 2' in response.error.traceback


def test_a_raising_main_has_a_traceback_of_the_users_code_only(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    code = src("""
        def divide(x):
            return 10 / x

        def main(inputs):
            return divide(inputs["x"])
    """)
    response = execute(sandbox, tenant, source=code, inputs={"x": 0})
    assert response.status == ERROR
    assert (response.error.type, response.error.message) == ("ZeroDivisionError",
                                                             "division by zero")
    assert response.error.line == 2
    trace = response.error.traceback
    assert 'File "main.py", line 5, in main' in trace
    assert 'File "main.py", line 2, in divide' in trace and "return 10 / x" in trace
    assert "runner.py" not in trace and "services" not in trace


def test_huge_output_is_truncated_and_a_huge_result_is_output_limit(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    printed = execute(sandbox, tenant, source=src("""
        import sys

        def main(inputs):
            print("x" * 10_000_000)
            sys.stderr.write("y" * 200_000)
            return "done"
    """))
    assert result_of(printed) == "done"
    assert printed.stdout_truncated and printed.stderr_truncated
    assert 0 < len(printed.stdout) <= 64 * 1024 and set(printed.stdout) == {"x"}
    big = execute(sandbox, tenant, source="def main(inputs):\n    return 'x' * 5_000_000\n")
    assert big.status == sandbox_pb2.EXECUTION_STATUS_OUTPUT_LIMIT
    assert "limit is 1048576" in big.error.message
    lowered = execute(sandbox, tenant, source="def main(inputs):\n    return 'x' * 200\n",
                      limit=limits(max_output_bytes=100))
    assert lowered.status == sandbox_pb2.EXECUTION_STATUS_OUTPUT_LIMIT


@pytest.mark.parametrize("kwargs, field, fragment", [
    ({"source": ""}, "source", "must not be empty"),
    ({"source": "   \n\t"}, "source", "must not be empty"),
    ({"source": "\x00\x01\x02binary\xff\xfe" * 50}, "source", "looks binary"),
    ({"source": "def main(i):\n    return 1\n", "limit": limits(timeout_s=3600)},
     "limits.timeout", "above the server's maximum"),
    ({"source": "def main(i):\n    return 1\n", "limit": limits(memory_mb=100_000)},
     "limits.memory_mb", "above the server's maximum"),
    ({"source": "def main(i):\n    return 1\n", "limit": limits(memory_mb=-5)},
     "limits.memory_mb", "must not be negative"),
    ({"source": "def main(i):\n    return 1\n", "limit": limits(cpu_s=-1)},
     "limits.cpu_time", "must not be negative"),
    ({"source": "def main(i):\n    return 1\n", "limit": limits(max_output_bytes=1 << 30)},
     "limits.max_output_bytes", "above the server's maximum"),
    ({"source": "def main(i):\n    return 1\n", "wasm": b""}, "source", "must be empty"),
], ids=["empty", "blank", "binary", "timeout-above", "memory-above", "memory-negative",
        "cpu-negative", "output-above", "python-as-wasm"])
def test_bad_requests_are_invalid_argument_naming_the_field(sandbox, tenant, kwargs, field,  # type: ignore[no-untyped-def]
                                                            fragment) -> None:
    with pytest.raises(grpc.RpcError) as info:
        execute(sandbox, tenant, **kwargs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violation_descriptions(info.value)
    assert field in found, found
    assert fragment in found[field]


def test_every_refused_limit_is_named(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        execute(sandbox, tenant, source="def main(i):\n    return 1\n",
                limit=limits(timeout_s=-1, memory_mb=1 << 20, cpu_s=10_000))
    assert set(violation_descriptions(info.value)) == {"limits.timeout", "limits.memory_mb",
                                                       "limits.cpu_time"}


def test_language_is_required(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    from iceos.sandbox.v1 import sandbox_pb2_grpc
    with pytest.raises(grpc.RpcError) as info:
        sandbox_pb2_grpc.SandboxServiceStub(sandbox).Execute(
            sandbox_pb2.ExecuteRequest(parent=tenant.parent, source="def main(i): pass"),
            metadata=tenant.md(), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "language" in violation_descriptions(info.value)


def test_viewers_cannot_execute_and_other_projects_are_not_found(  # type: ignore[no-untyped-def]
        sandbox, tenant, other_tenant) -> None:
    code = "def main(i):\n    return 1\n"
    with pytest.raises(grpc.RpcError) as info:
        execute(sandbox, tenant, source=code, role=Role.VIEWER)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    from iceos.sandbox.v1 import sandbox_pb2_grpc
    with pytest.raises(grpc.RpcError) as info:
        sandbox_pb2_grpc.SandboxServiceStub(sandbox).Execute(
            sandbox_pb2.ExecuteRequest(parent=tenant.parent, language=sandbox_pb2.LANGUAGE_PYTHON,
                                       source=code),
            metadata=other_tenant.md(Role.ADMIN), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _post(stack, tenant, body: dict) -> tuple[int, dict]:  # type: ignore[no-untyped-def, type-arg]
    request = urllib.request.Request(
        f"{stack.edge.url}/v1/{tenant.parent}/sandbox:execute", data=json.dumps(body).encode(),
        method="POST", headers={**tenant.headers(), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_json_through_the_edge(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    status, body = _post(stack, tenant, {
        "language": "LANGUAGE_PYTHON", "inputs": {"name": "edge"},
        "source": "def main(inputs):\n    print('hi')\n    return {'hello': inputs['name']}\n",
        "limits": {"timeout": "5s", "memoryMb": "128"}})
    assert status == 200, body
    assert body["status"] == "EXECUTION_STATUS_OK"
    assert body["result"] == {"hello": "edge"} and body["stdout"] == "hi\n"
    assert body["usage"]["wallTime"].endswith("s")
    status, body = _post(stack, tenant, {"language": "LANGUAGE_PYTHON",
                                         "source": "def main(i):\n    return 1\n",
                                         "limits": {"timeout": "3600s"}})
    assert status == 400
    assert "limits.timeout" in json.dumps(body)
