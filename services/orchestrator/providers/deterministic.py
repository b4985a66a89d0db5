"""The `deterministic` provider: no key, no network, the same answer for the same conversation.

Plain prompts get `Deterministic answer <hash>: <the prompt's first line>`; with a response
schema, a JSON value built from the schema (every property, strings and numbers derived from the
prompt's hash). Token usage counts whitespace-separated words.

Scripted agents. A user message may carry a plan the provider follows, one step per model turn:

    <plan>[{"call": "builtins/json_transform", "args": {"expression": "input * 2", "input": 21}},
           {"answer": "The result is $last"}]</plan>

A `call` step returns a tool call (the tool by its reference or its function name); an `answer`
step ends with that text, where `$last` is the JSON of the latest tool result and `$1`, `$2`, …
the JSON of the first, second, … tool result. When the plan runs out, the answer is the latest
tool result. The step is the number of assistant turns so far, so the provider keeps no state.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .base import ChatRequest, ChatResponse, Message, ProviderError, ToolCall, Usage

_PLAN = re.compile(r"<plan>(.*?)</plan>", re.S)


def _words(text: str) -> int:
    return len(text.split())


def _digest(request: ChatRequest) -> str:
    text = json.dumps([[m.role, m.content] for m in request.messages], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _instance(schema: dict[str, Any], seed: str) -> Any:
    """A value of the schema's shape, derived from `seed`, within its bounds (minimum/maximum,
    lengths, item counts, enums, constants)."""
    pick = int(seed[:8], 16)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][pick % len(schema["enum"])]
    for key in ("oneOf", "anyOf", "allOf"):
        if schema.get(key):
            return _instance(schema[key][0], seed)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: _instance(sub, hashlib.sha256((seed + name).encode()).hexdigest())
                for name, sub in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        count = min(count, int(schema.get("maxItems", count)))
        return [_instance(schema.get("items") or {"type": "string"},
                          hashlib.sha256(f"{seed}{i}".encode()).hexdigest()) for i in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100))
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            low += 1 if kind == "integer" else 0.01
        if "exclusiveMaximum" in schema and "maximum" not in schema:
            high -= 1 if kind == "integer" else 0.01
        if high < low:
            high = low
        if kind == "integer":
            low, high = int(-(-low // 1)), int(high // 1)
            return low + pick % (high - low + 1) if high >= low else low
        return round(low + (pick % 10000) / 10000 * (high - low), 2)
    if kind == "boolean":
        return pick % 2 == 0
    if kind == "null":
        return None
    text = f"text-{seed[:8]}"
    shortest, longest = int(schema.get("minLength", 0)), schema.get("maxLength")
    text = (text * (1 + shortest // len(text)))[:max(len(text), shortest)]
    return text[:int(longest)] if longest is not None else text


class DeterministicProvider:
    name = "deterministic"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        prompt_tokens = sum(_words(m.content) for m in request.messages)
        plan = self._plan(request.messages)
        if plan is not None:
            return self._follow(plan, request, prompt_tokens)
        digest = _digest(request)
        if request.response_schema:
            text = json.dumps(_instance(request.response_schema, digest))
        else:
            last_user = next((m.content for m in reversed(request.messages)
                              if m.role == "user"), "")
            first_line = (last_user.strip().splitlines() or [""])[0][:200]
            text = f"Deterministic answer {digest[:8]}: {first_line}"
        return ChatResponse(text=text, usage=Usage(prompt_tokens, _words(text)),
                            model="deterministic")

    @staticmethod
    def _plan(messages: tuple[Message, ...]) -> list[dict[str, Any]] | None:
        for message in messages:
            if message.role != "user":
                continue
            match = _PLAN.search(message.content)
            if match:
                try:
                    plan = json.loads(match.group(1))
                except ValueError as exc:
                    raise ProviderError("BAD_PLAN", f"the <plan> is not JSON: {exc}") from None
                if not isinstance(plan, list) or not all(isinstance(s, dict) for s in plan):
                    raise ProviderError("BAD_PLAN", "the <plan> must be a JSON list of steps")
                return plan
        return None

    def _follow(self, plan: list[dict[str, Any]], request: ChatRequest,
                prompt_tokens: int) -> ChatResponse:
        step = sum(1 for m in request.messages if m.role == "assistant")
        results = [m.content for m in request.messages if m.role == "tool"]
        if step < len(plan) and "call" in plan[step]:
            wanted = str(plan[step]["call"])
            name = next((t.name for t in request.tools if wanted in (t.name, t.ref)), wanted)
            call = ToolCall(id=f"call_{step + 1}", name=name,
                            arguments=dict(plan[step].get("args") or {}))
            return ChatResponse(text="", tool_calls=(call,),
                                usage=Usage(prompt_tokens, 1 + _words(json.dumps(call.arguments))),
                                model="deterministic")
        if step < len(plan) and "answer" in plan[step]:
            text = str(plan[step]["answer"])
            if results:
                text = text.replace("$last", results[-1])
            for index in range(len(results), 0, -1):
                text = text.replace(f"${index}", results[index - 1])
        else:
            text = results[-1] if results else "done"
        return ChatResponse(text=text, usage=Usage(prompt_tokens, _words(text)),
                            model="deterministic")
