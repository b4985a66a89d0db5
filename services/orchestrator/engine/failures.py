"""How a node fails: a reason (stable, UPPER_SNAKE), a message for people, optional details.

Reasons a user may see on NodeRun.error / Run.error:
  TOOL_ERROR, BAD_ARGUMENTS, BAD_OUTPUT, OUTPUT_TOO_LARGE, RUN_OUTPUT_TOO_LARGE, TIMEOUT,
  EXPRESSION_ERROR, TEMPLATE_ERROR, LOOP_TOO_MANY_ITEMS, TOO_MANY_NODE_EXECUTIONS,
  UNKNOWN_COMPONENT, CODE_ERROR, SANDBOX_LIMIT, SANDBOX_UNAVAILABLE, PROVIDER_ERROR,
  PROVIDER_UNAVAILABLE, UNKNOWN_PROVIDER, BAD_MODEL_OUTPUT, AGENT_MAX_ITERATIONS, REJECTED,
  HUMAN_TIMEOUT, CHILD_FAILED, CHILD_CANCELLED, CHILD_TIMED_OUT, CHILD_INPUT_INVALID,
  DEPTH_LIMIT, CANCELLED, WORKER_LOST, INTERNAL.
"""

from __future__ import annotations

from typing import Any


class NodeFailure(Exception):
    def __init__(self, reason: str, message: str, *, details: dict[str, Any] | None = None,
                 timed_out: bool = False, node: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.timed_out = timed_out
        self.node = node

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "message": self.message}
        if self.details:
            out["details"] = self.details
        if self.node:
            out["node"] = self.node
        return out
