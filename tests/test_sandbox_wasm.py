"""WASM in the sandbox (wasmtime): JSON in on stdin and out on stdout, fuel, memory and deadline
limits with their own statuses, WASI with nothing to reach, and clear errors for bad modules."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import grpc
import pytest
import wasmtime
from google.protobuf import json_format
from iceos.sandbox.v1 import sandbox_pb2

from tests.support.sandbox import EXAMPLES, execute, limits

ECHO = (EXAMPLES / "echo.wat").read_bytes()
SPIN = b'(module (func (export "_start") (loop $l (br $l))))'
GROW = b"""(module (memory (export "memory") 1)
  (func (export "_start")
    (loop $more (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))"""
HUGE = b'(module (memory (export "memory") 20000) (func (export "_start")))'


def writes(text: str, *, exit_code: int | None = None) -> bytes:
    """A module that writes `text` on stdout, then optionally exits with `exit_code`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    exit_call = f"(call $exit (i32.const {exit_code}))" if exit_code is not None else ""
    return f"""(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 64) "{escaped}")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 64))
        (i32.store (i32.const 4) (i32.const {len(text.encode())}))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        {exit_call}))""".encode()


# Probes fds 3..15 for preopened directories and tries to accept on them: a sandbox with
# nothing preopened answers {"preopened":false,"socket":false}.
REACH = b"""(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "{\\"preopened\\":")
  (data (i32.const 120) "true")
  (data (i32.const 130) "false")
  (data (i32.const 140) ",\\"socket\\":")
  (data (i32.const 160) "}")
  (func $emit (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $bool (param $yes i32)
    (if (local.get $yes)
      (then (call $emit (i32.const 120) (i32.const 4)))
      (else (call $emit (i32.const 130) (i32.const 5)))))
  (func (export "_start")
    (local $fd i32) (local $pre i32) (local $sock i32)
    (local.set $fd (i32.const 3))
    (loop $next
      (if (i32.eqz (call $prestat (local.get $fd) (i32.const 16)))
        (then (local.set $pre (i32.const 1))))
      (if (i32.eqz (call $accept (local.get $fd) (i32.const 0) (i32.const 32)))
        (then (local.set $sock (i32.const 1))))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $fd) (i32.const 16))))
    (call $emit (i32.const 100) (i32.const 13))
    (call $bool (local.get $pre))
    (call $emit (i32.const 140) (i32.const 10))
    (call $bool (local.get $sock))
    (call $emit (i32.const 160) (i32.const 1))))"""


@pytest.fixture
def sandbox(stack):  # type: ignore[no-untyped-def]
    with stack.channel("sandbox") as channel:
        yield channel


def test_echo_round_trip_in_text_and_binary_format(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    inputs = {"name": "wasm", "values": [1, 2.5, None, True], "nested": {"deep": ["x"]}}
    for module in (ECHO, wasmtime.wat2wasm(ECHO.decode())):
        response = execute(sandbox, tenant, wasm=bytes(module), inputs=inputs)
        assert response.status == sandbox_pb2.EXECUTION_STATUS_OK, response.error
        assert json_format.MessageToDict(response.result) == {"echo": inputs}
        assert json.loads(response.stdout) == {"echo": inputs}
        assert 0 < response.usage.fuel_consumed < 100_000
        assert response.usage.peak_memory_bytes == 2 * 64 * 1024


def test_fuel_runs_out_as_cpu_limit(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    response = execute(sandbox, tenant, wasm=SPIN, limit=limits(fuel=2_000_000))
    assert response.status == sandbox_pb2.EXECUTION_STATUS_CPU_LIMIT
    assert response.error.type == "CpuLimit"
    assert response.usage.fuel_consumed == 2_000_000


def test_the_epoch_deadline_is_a_timeout(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    response = execute(sandbox, tenant, wasm=SPIN, limit=limits(timeout_s=0.5))
    assert response.status == sandbox_pb2.EXECUTION_STATUS_TIMEOUT
    assert 0.45e9 <= response.usage.wall_time.ToNanoseconds() < 10e9


def test_the_memory_cap_is_memory_limit(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    grown = execute(sandbox, tenant, wasm=GROW, limit=limits(memory_mb=64))
    assert grown.status == sandbox_pb2.EXECUTION_STATUS_MEMORY_LIMIT
    assert grown.usage.peak_memory_bytes == 64 * 1024 * 1024
    huge = execute(sandbox, tenant, wasm=HUGE)
    assert huge.status == sandbox_pb2.EXECUTION_STATUS_MEMORY_LIMIT
    assert "512 MiB" in huge.error.message


def test_wasi_has_no_preopened_directories_and_no_sockets(sandbox, tenant) -> None:  # type: ignore[no-untyped-def]
    response = execute(sandbox, tenant, wasm=REACH)
    assert response.status == sandbox_pb2.EXECUTION_STATUS_OK, response.error
    assert json_format.MessageToDict(response.result) == {"preopened": False, "socket": False}


@pytest.mark.parametrize("module, status, error_type, fragment", [
    (writes(""), sandbox_pb2.EXECUTION_STATUS_ERROR, "NonJSONResult", "wrote nothing"),
    (writes("not json"), sandbox_pb2.EXECUTION_STATUS_ERROR, "NonJSONResult", "not JSON"),
    (writes('{"partial": 1}', exit_code=3), sandbox_pb2.EXECUTION_STATUS_ERROR, "Exit",
     "status 3"),
    (writes("[1]", exit_code=0), sandbox_pb2.EXECUTION_STATUS_OK, "", ""),
    (b'(module (func (export "_start") unreachable))', sandbox_pb2.EXECUTION_STATUS_ERROR,
     "Trap", "unreachable"),
], ids=["no-output", "not-json", "exit-3", "exit-0", "trap"])
def test_module_failures_are_error_results(sandbox, tenant, module, status, error_type,  # type: ignore[no-untyped-def]
                                           fragment) -> None:
    response = execute(sandbox, tenant, wasm=module)
    assert response.status == status
    assert response.error.type == error_type
    assert fragment in response.error.message


@pytest.mark.parametrize("module, fragment", [
    (b"", "must not be empty"),
    (b"\x00asm\x01\x00\x00\x00garbage", "not a valid WebAssembly module"),
    (bytes(range(256)) * 8, "neither a WebAssembly binary"),
    (b'(module (func (export "_start") (i32.add)))', "not a valid WebAssembly module"),
    (b"(module (import \"env\" \"f\" (func)) (func (export \"_start\")))", "imports env.f"),
    (b'(module (func (export "main")))', "exports no _start"),
], ids=["empty", "bad-binary", "junk", "bad-text", "foreign-import", "no-start"])
def test_invalid_modules_are_invalid_argument(sandbox, tenant, module, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        execute(sandbox, tenant, wasm=module)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "wasm_module" in (info.value.details() or "")
    assert fragment in (info.value.details() or "")


def test_wasm_through_the_edge(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    body = {"language": "LANGUAGE_WASM", "inputs": [1, "two"],
            "wasmModule": base64.b64encode(ECHO).decode()}
    request = urllib.request.Request(
        f"{stack.edge.url}/v1/{tenant.parent}/sandbox:execute", data=json.dumps(body).encode(),
        method="POST", headers={**tenant.headers(), "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "EXECUTION_STATUS_OK"
    assert answer["result"] == {"echo": [1, "two"]}
