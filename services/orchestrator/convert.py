"""Rows ⇄ orchestrator protos (Run, NodeRun, RunEvent)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2
from iceos.orchestrator.v1 import run_pb2

from services.common.convert import dict_to_struct, timestamp


def value(data: Any, out: struct_pb2.Value | None = None) -> struct_pb2.Value:
    """A JSON value as google.protobuf.Value (Struct.update is much faster than ParseDict),
    written into `out` when given."""
    if out is None:
        out = struct_pb2.Value()
    if data is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        out.bool_value = data
    elif isinstance(data, (int, float)):
        out.number_value = data
    elif isinstance(data, str):
        out.string_value = data
    elif isinstance(data, dict):
        out.struct_value.update(data)
    elif isinstance(data, list):
        out.list_value.extend(data)
    else:
        json_format.ParseDict(data, out)
    return out


def error(data: dict[str, Any] | None) -> run_pb2.RunError | None:
    if not data:
        return None
    details = data.get("details")
    return run_pb2.RunError(reason=str(data.get("reason", "")),
                            message=str(data.get("message", "")),
                            node=str(data.get("node", "")),
                            details=dict_to_struct(details) if isinstance(details, dict)
                            else None)


def usage(data: dict[str, Any] | None) -> run_pb2.TokenUsage | None:
    if not data:
        return None
    return run_pb2.TokenUsage(prompt_tokens=int(data.get("prompt_tokens", 0)),
                              completion_tokens=int(data.get("completion_tokens", 0)),
                              total_tokens=int(data.get("total_tokens", 0)))


_NODE_STATES = {name.removeprefix("NODE_STATE_"): number
                for name, number in run_pb2.NodeState.items()}


def run_name(project_id: str, run_id: str) -> str:
    return f"projects/{project_id}/runs/{run_id}"


def run(row: dict[str, Any], nodes: list[dict[str, Any]] | None = None,
        attempts: list[dict[str, Any]] | None = None, *, full: bool = False) -> run_pb2.Run:
    project = row["project_id"]
    out = run_pb2.Run(
        name=run_name(project, row["id"]),
        blueprint=f"projects/{project}/blueprints/{row['blueprint_id']}"
        if row["blueprint_id"] else "",
        blueprint_version=row["blueprint_version"] or 0,
        state=run_pb2.RunState.Value(f"RUN_STATE_{row['state']}"),
        inputs=dict_to_struct(row["inputs"]),
        error=error(row["error"]),
        usage=usage(row["usage"]),
        parent_run=run_name(project, row["parent_run_id"]) if row["parent_run_id"] else "",
        parent_node=row["parent_node"] or "",
        request_id=row["request_id"] or "",
        create_time=timestamp(row["create_time"]),
        start_time=timestamp(row["start_time"]),
        end_time=timestamp(row["end_time"]),
        deadline=timestamp(row["deadline"]),
        last_event_sequence=row["last_event_seq"],
        cancel_requested=row["cancel_requested"],
        claim_count=row["claim_count"],
    )
    if row["state"] == "SUCCEEDED":
        value(row["output"], out.output)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for a in attempts or []:
        by_path.setdefault(a["path"], []).append(a)
    # Messages are built in place (add), not built and then copied in (append).
    for n in nodes or []:
        node = out.nodes.add(
            path=n["path"], node_id=n["node_id"], kind=n["kind"],
            state=_NODE_STATES[n["state"]], attempt=n["attempt"],
            error=error(n["error"]), usage=usage(n["usage"]),
            start_time=timestamp(n["start_time"]), end_time=timestamp(n["end_time"]))
        for a in by_path.get(n["path"], ()):
            node.attempts.add(attempt=a["attempt"], idempotency_key=a["idempotency_key"],
                              worker=a["worker_id"], outcome=a["outcome"] or "",
                              start_time=timestamp(a["start_time"]),
                              end_time=timestamp(a["end_time"]))
        if n["state"] == "SUCCEEDED":
            value(n["output"], node.output)
    if full:
        json_format.ParseDict(row["spec"], out.blueprint_snapshot, ignore_unknown_fields=True)
    return out


def event(project_id: str, run_id: str, row: dict[str, Any]) -> run_pb2.RunEvent:
    return run_pb2.RunEvent(
        run=run_name(project_id, run_id), sequence=row["seq"],
        type=run_pb2.RunEventType.Value(f"RUN_EVENT_TYPE_{row['type']}"),
        node=row["node"], payload=dict_to_struct(row["payload"]),
        time=timestamp(row["time"]))
