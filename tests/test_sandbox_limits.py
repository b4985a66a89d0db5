"""Limit resolution: a request lowers the server's limits, never raises them, and every refused
limit is named; server limits and concurrency come from the environment."""

from __future__ import annotations

import pytest

from services.common import errors
from services.common.settings import SandboxLimits, Settings
from services.sandbox.limits import (FUEL_PER_CPU_SECOND, MAX_OUTPUT_BYTES, RequestedLimits,
                                     resolve, server_maximum)

MAXIMUM = server_maximum(SandboxLimits(timeout_s=30, memory_mb=512, cpu_s=10))


def test_unset_limits_take_the_servers_and_lower_ones_apply() -> None:
    assert resolve(RequestedLimits(), MAXIMUM) == MAXIMUM
    lowered = resolve(RequestedLimits(timeout_s=2, memory_mb=128, cpu_s=1.5,
                                      max_output_bytes=10), MAXIMUM)
    assert (lowered.timeout_s, lowered.memory_mb, lowered.cpu_s, lowered.max_output_bytes) == \
        (2, 128, 1.5, 10)
    # Fuel follows a lowered CPU limit unless set on its own.
    assert lowered.fuel == int(1.5 * FUEL_PER_CPU_SECOND)
    assert resolve(RequestedLimits(cpu_s=1, fuel=5), MAXIMUM).fuel == 5


def test_every_refused_limit_is_a_field_violation() -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        resolve(RequestedLimits(timeout_s=31, memory_mb=-1, cpu_s=float("inf"),
                                max_output_bytes=MAX_OUTPUT_BYTES + 1, fuel=-3), MAXIMUM)
    found = {v.field: v.reason for v in info.value.violations}
    assert found == {"limits.timeout": "LIMIT_ABOVE_MAXIMUM",
                     "limits.memory_mb": "LIMIT_NEGATIVE", "limits.cpu_time": "LIMIT_INVALID",
                     "limits.max_output_bytes": "LIMIT_ABOVE_MAXIMUM",
                     "limits.fuel": "LIMIT_NEGATIVE"}
    with pytest.raises(errors.InvalidArgument, match="below the minimum of 64 MiB"):
        resolve(RequestedLimits(memory_mb=8), MAXIMUM)


def test_sandbox_settings_come_from_the_environment() -> None:
    sandbox = Settings.from_env({"ICEOS_SANDBOX_CONCURRENCY": "8", "ICEOS_SANDBOX_QUEUE_S": "0.5",
                                 "ICEOS_SANDBOX_CPU_S": "3"}).sandbox
    assert (sandbox.concurrency, sandbox.queue_wait_s, sandbox.cpu_s) == (8, 0.5, 3.0)
    assert server_maximum(sandbox).fuel == 3 * FUEL_PER_CPU_SECOND
