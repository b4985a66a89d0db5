"""The run engine's limits and timings, read from the environment once at start.

Every limit has a clear error when crossed (see services/orchestrator/engine/failures.py for
the reasons). Defaults suit a laptop; the tests shorten the timings.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from services.common.settings import ConfigError

MIB = 1024 * 1024


def _num(env: dict[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class EngineConfig:
    # Identity of this process's worker in leases and attempt records.
    worker_id: str = field(default_factory=_worker_id)
    # A lease lasts this long unless renewed; the heartbeat renews it every third of it.
    lease_s: float = 15.0
    # How often an idle worker looks for claimable runs when no Redis wake-up arrives.
    poll_s: float = 1.0
    # Runs one worker executes at once (more stay QUEUED for other workers).
    max_runs_per_worker: int = 200
    # Leaf nodes (tool, llm, agent, code) executing at once in one run and in one worker.
    max_nodes_per_run: int = 16
    max_nodes_per_worker: int = 512
    # Bytes of JSON output per node and per run (all node outputs together).
    max_node_output_bytes: int = 2 * MIB
    max_run_output_bytes: int = 32 * MIB
    # Default and maximum items of a loop (LoopNode.max_items may lower it).
    max_loop_items: int = 1000
    # Node executions per run, all levels together: stops runaway nesting.
    max_node_executions: int = 100_000
    # Child-run nesting (a workflow node starting a run that starts a run ...).
    max_run_depth: int = 8
    # Per-attempt node timeout when the node sets none.
    node_timeout_s: float = 300.0
    # Run deadline when neither the blueprint nor StartRun sets one, and the most allowed.
    run_timeout_s: float = 24 * 3600.0
    max_run_timeout_s: float = 7 * 24 * 3600.0
    # A run whose only unfinished nodes wait (human signals, child runs) is parked — WAITING,
    # lease released — after this long, and woken by the signal, the child or a timer.
    park_after_s: float = 0.5
    # A run claimed this many times without finishing fails (a node that kills its worker).
    max_claims: int = 20
    # Unfinished runs one project may have; StartRun beyond it is RESOURCE_EXHAUSTED.
    max_active_runs_per_project: int = 10_000
    # Register the test-only built-in tools (never in production).
    test_tools: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "EngineConfig":
        env = dict(os.environ if env is None else env)
        flag = env.get("ICEOS_TEST_TOOLS", "").lower() in ("1", "true", "yes")
        return cls(
            lease_s=_num(env, "ICEOS_RUN_LEASE_S", 15.0, 0.5),
            poll_s=_num(env, "ICEOS_RUN_POLL_S", 1.0, 0.01),
            max_runs_per_worker=int(_num(env, "ICEOS_WORKER_MAX_RUNS", 200, 1)),
            max_nodes_per_run=int(_num(env, "ICEOS_RUN_MAX_CONCURRENCY", 16, 1)),
            max_nodes_per_worker=int(_num(env, "ICEOS_WORKER_MAX_NODES", 512, 1)),
            max_node_output_bytes=int(_num(env, "ICEOS_NODE_OUTPUT_MAX_BYTES", 2 * MIB, 1)),
            max_run_output_bytes=int(_num(env, "ICEOS_RUN_OUTPUT_MAX_BYTES", 32 * MIB, 1)),
            max_loop_items=int(_num(env, "ICEOS_LOOP_MAX_ITEMS", 1000, 1)),
            max_node_executions=int(_num(env, "ICEOS_RUN_MAX_NODE_EXECUTIONS", 100_000, 1)),
            max_run_depth=int(_num(env, "ICEOS_RUN_MAX_DEPTH", 8, 0)),
            node_timeout_s=_num(env, "ICEOS_NODE_TIMEOUT_S", 300.0, 0.01),
            run_timeout_s=_num(env, "ICEOS_RUN_TIMEOUT_S", 24 * 3600.0, 0.01),
            max_run_timeout_s=_num(env, "ICEOS_RUN_MAX_TIMEOUT_S", 7 * 24 * 3600.0, 0.01),
            park_after_s=_num(env, "ICEOS_RUN_PARK_AFTER_S", 0.5, 0.0),
            max_claims=int(_num(env, "ICEOS_RUN_MAX_CLAIMS", 20, 1)),
            max_active_runs_per_project=int(_num(env, "ICEOS_PROJECT_MAX_ACTIVE_RUNS", 10_000,
                                                 1)),
            test_tools=flag,
        )
