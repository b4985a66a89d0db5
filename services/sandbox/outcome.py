"""What an execution produced, in domain terms (api.py maps it to ExecuteResponse)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Language(enum.Enum):
    PYTHON = "python"
    WASM = "wasm"


class Status(enum.Enum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    CPU_LIMIT = "cpu_limit"
    OUTPUT_LIMIT = "output_limit"
    KILLED = "killed"


@dataclass
class ExecutionError:
    type: str
    message: str
    traceback: str = ""
    line: int = 0


@dataclass
class Usage:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_memory_bytes: int = 0
    fuel_consumed: int = 0


@dataclass
class Outcome:
    status: Status
    result: Any = None
    error: ExecutionError | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    usage: Usage = field(default_factory=Usage)


@dataclass
class Job:
    """One validated execution request."""

    language: Language
    inputs: Any
    source: str = ""
    wasm_module: bytes = b""
    idempotency_key: str = ""
    project_id: str = ""


# Deepest JSON nesting a result may have: protobuf clients refuse messages nested deeper than
# 100, and each JSON level costs up to three (Value, Struct, map entry).
MAX_RESULT_DEPTH = 32


def decode_output(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def safe_text(value: Any) -> str:
    """A string from untrusted code, made safe to put in a protobuf string (no surrogates)."""
    return str(value if value is not None else "").encode("utf-8", "replace").decode("utf-8")


def refuse_constant(name: str) -> Any:
    """json.loads hook: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def json_depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def too_deep(value: Any) -> ExecutionError | None:
    if json_depth(value) > MAX_RESULT_DEPTH:
        return ExecutionError("NonJSONResult",
                              f"the result is JSON nested deeper than {MAX_RESULT_DEPTH} levels")
    return None
