"""Execution limits: the server's maxima (from Settings) and what one request may ask for.

A request may lower a limit, never raise it. Zero or unset means "the server's value"; a negative
value or one above the maximum is INVALID_ARGUMENT naming the field (`limits.memory_mb`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.common import errors
from services.common.settings import SandboxLimits

MIB = 1024 * 1024
# The smallest address space a forked interpreter can still work in.
MIN_MEMORY_MB = 64
MAX_OUTPUT_BYTES = 1 * MIB
# Captured stdout/stderr per execution; the rest is dropped and flagged.
STREAM_BYTES = 64 * 1024
# WASM fuel per second of CPU: wasmtime charges about one unit per instruction. A budget, not a
# clock: the epoch deadline bounds wall time independently.
FUEL_PER_CPU_SECOND = 1_000_000_000


@dataclass(frozen=True)
class ExecutionLimits:
    timeout_s: float
    memory_mb: int
    cpu_s: float
    max_output_bytes: int
    fuel: int

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * MIB


@dataclass(frozen=True)
class RequestedLimits:
    """What the request asked for; 0 means unset."""

    timeout_s: float = 0.0
    memory_mb: int = 0
    cpu_s: float = 0.0
    max_output_bytes: int = 0
    fuel: int = 0


def server_maximum(sandbox: SandboxLimits) -> ExecutionLimits:
    return ExecutionLimits(
        timeout_s=sandbox.timeout_s, memory_mb=sandbox.memory_mb, cpu_s=sandbox.cpu_s,
        max_output_bytes=MAX_OUTPUT_BYTES,
        fuel=int(sandbox.cpu_s * FUEL_PER_CPU_SECOND))


def _fmt(value: float) -> str:
    return f"{value:g}"


def resolve(requested: RequestedLimits, maximum: ExecutionLimits) -> ExecutionLimits:
    """The limits for one execution, or InvalidArgument listing every refused limit."""
    violations = errors.Violations()

    def pick(field: str, asked: float, most: float, unit: str, least: float = 0) -> float:
        if not math.isfinite(asked):
            violations.add(f"limits.{field}", "must be a finite number", "LIMIT_INVALID")
            return most
        if asked < 0:
            violations.add(f"limits.{field}", f"must not be negative (got {_fmt(asked)}{unit})",
                           "LIMIT_NEGATIVE")
            return most
        if asked > most:
            violations.add(f"limits.{field}",
                           f"{_fmt(asked)}{unit} is above the server's maximum of "
                           f"{_fmt(most)}{unit}; a request may lower limits, not raise them",
                           "LIMIT_ABOVE_MAXIMUM")
            return most
        if 0 < asked < least:
            violations.add(f"limits.{field}",
                           f"{_fmt(asked)}{unit} is below the minimum of {_fmt(least)}{unit}",
                           "LIMIT_BELOW_MINIMUM")
            return most
        return asked or most

    limits = ExecutionLimits(
        timeout_s=pick("timeout", requested.timeout_s, maximum.timeout_s, "s"),
        memory_mb=int(pick("memory_mb", requested.memory_mb, maximum.memory_mb, " MiB",
                           least=MIN_MEMORY_MB)),
        cpu_s=pick("cpu_time", requested.cpu_s, maximum.cpu_s, "s"),
        max_output_bytes=int(pick("max_output_bytes", requested.max_output_bytes,
                                  maximum.max_output_bytes, " bytes")),
        fuel=int(pick("fuel", requested.fuel, maximum.fuel, "")),
    )
    violations.raise_if_any("limits refused")
    if not requested.fuel:
        # Unset fuel follows the CPU limit, so a lower cpu_time lowers WASM fuel too.
        limits = ExecutionLimits(limits.timeout_s, limits.memory_mb, limits.cpu_s,
                                 limits.max_output_bytes,
                                 min(maximum.fuel, int(limits.cpu_s * FUEL_PER_CPU_SECOND)))
    return limits
