"""ListRuns filters: `state = SUCCEEDED AND blueprint = "b" AND create_time > "2026-01-01T00:00:00Z"`.

Clauses joined by AND: `state = <STATE>` (repeatable: any of them), `blueprint = "<id or name>"`,
`create_time <op> "<RFC 3339>"` with op one of < <= > >= =. Anything else is INVALID_ARGUMENT
naming the clause."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from services.common import errors

from .components import blueprint_id

STATES = ("QUEUED", "RUNNING", "WAITING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
_CLAUSE = re.compile(r"""^\s*([a-z_]+)\s*(<=|>=|!=|=|<|>)\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_:.+-]+)\s*$""")


@dataclass
class RunFilter:
    states: list[str] = field(default_factory=list)
    blueprint_id: str | None = None
    time_bounds: list[tuple[str, datetime]] = field(default_factory=list)


def _bad(clause: str, why: str) -> errors.InvalidArgument:
    return errors.InvalidArgument.field("filter", f"{clause.strip()!r}: {why}", "BAD_FILTER")


def parse_run_filter(text: str, project_id: str) -> RunFilter:
    out = RunFilter()
    if not text.strip():
        return out
    for clause in re.split(r"\s+AND\s+", text.strip()):
        match = _CLAUSE.match(clause)
        if not match:
            raise _bad(clause, "use `field op value`, e.g. state = SUCCEEDED")
        name, op, raw = match.groups()
        value = raw[1:-1] if raw[:1] in ("'", '"') else raw
        if name == "state":
            state = value.upper().removeprefix("RUN_STATE_")
            if op != "=" or state not in STATES:
                raise _bad(clause, f"state takes `=` and one of {', '.join(STATES)}")
            out.states.append(state)
        elif name == "blueprint":
            bid = blueprint_id(value, project_id)
            if op != "=" or bid is None:
                raise _bad(clause, "blueprint takes `=` and a blueprint id or name")
            out.blueprint_id = bid
        elif name == "create_time":
            if op == "!=":
                raise _bad(clause, "create_time takes < <= > >= or =")
            try:
                bound = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise _bad(clause, "create_time needs an RFC 3339 time, e.g. "
                                   "\"2026-01-01T00:00:00Z\"") from None
            if bound.tzinfo is None:
                raise _bad(clause, "the time needs a zone, e.g. Z")
            out.time_bounds.append((op, bound))
        else:
            raise _bad(clause, "filter on state, blueprint or create_time")
    return out
