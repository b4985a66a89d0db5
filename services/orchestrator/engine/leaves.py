"""The leaf node kinds: tool, llm, agent and code. Each executor gets the execution, the node,
its record (attempt, usage) and the context, and returns the node's output or raises
NodeFailure. Built-in tools run in process (they are our code); Python and WASM tools and code
nodes run in the sandbox service."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jsonschema
from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2
from iceos.sandbox.v1 import sandbox_pb2

from services.common import builtins

from .. import providers
from ..components import Component
from ..sandbox import SandboxUnavailable
from .failures import NodeFailure

if TYPE_CHECKING:
    from .execution import Context, Execution, NodeRecord

DEFAULT_AGENT_ITERATIONS = 8


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def schema_errors(schema: dict[str, Any] | None, value: Any) -> list[str]:
    """Readable violations of `value` against a JSON Schema (empty when it satisfies it)."""
    if not schema:
        return []
    validator = _validator(json.dumps(schema, sort_keys=True))
    if validator.is_valid(value):
        return []
    found = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        found.append(f"{where.lstrip('.') or '(root)'}: {error.message}")
    return found


# -- tools ------------------------------------------------------------------------------------

async def call_tool(ex: "Execution", component: Component, args: dict[str, Any], key: str,
                    timeout_s: float, *, checked: bool = False) -> Any:
    """Run a tool component with arguments; the idempotency key reaches the tool. `checked`:
    these exact arguments were validated against this component before."""
    if component.kind != "tool":
        raise NodeFailure("WRONG_COMPONENT_KIND", f"{component.ref} is a {component.kind}, "
                                                  "not a tool")
    problems = [] if checked else schema_errors(component.input_schema, args)
    if problems:
        raise NodeFailure("BAD_ARGUMENTS", f"arguments of {component.ref} do not match its "
                                           f"input schema: {'; '.join(problems[:5])}")
    tool = component.builtin
    if tool is None and component.field("tool", "builtin"):
        tool = builtins.get(component.field("tool", "builtin"))
    if tool is not None:
        context = builtins.ToolContext(project_id=ex.project_id, idempotency_key=key,
                                       extra={"db": ex.worker.db,
                                              "worker_id": ex.config.worker_id})
        try:
            return await tool.run(args, context)
        except builtins.ToolError as exc:
            raise NodeFailure(exc.reason, exc.message) from None
        except (asyncio.CancelledError, NodeFailure):
            raise
        except Exception as exc:  # noqa: BLE001 - a tool's bug is the node's failure
            raise NodeFailure("TOOL_ERROR", f"{component.ref} raised "
                                            f"{exc.__class__.__name__}: {exc}") from None
    source = component.field("tool", "python_source")
    wasm = component.field("tool", "wasm_module")
    if not source and not wasm:
        raise NodeFailure("TOOL_ERROR", f"{component.ref} has no implementation")
    return await sandbox(ex, inputs=args, key=key, timeout_s=timeout_s, source=source,
                         wasm=base64.b64decode(wasm) if wasm else None)


async def sandbox(ex: "Execution", *, inputs: Any, key: str, timeout_s: float,
                  source: str | None = None, wasm: bytes | None = None) -> Any:
    worker = ex.worker
    organization = await worker.organization_of(ex.project_id)
    limit = min(timeout_s, worker.settings.sandbox.timeout_s)
    try:
        response = await worker.sandbox.execute(
            project_id=ex.project_id, organization_id=organization, inputs=inputs,
            idempotency_key=key, timeout_s=limit, source=source, wasm_module=wasm)
    except SandboxUnavailable as exc:
        raise NodeFailure("SANDBOX_UNAVAILABLE", exc.message) from None
    status = response.status
    if status == sandbox_pb2.EXECUTION_STATUS_OK:
        return json_format.MessageToDict(response.result)
    error = response.error
    details = {"type": error.type, "message": error.message, "traceback": error.traceback,
               "line": error.line, "stderr": response.stderr[-4000:]}
    if status == sandbox_pb2.EXECUTION_STATUS_TIMEOUT:
        raise NodeFailure("TIMEOUT", f"the code ran longer than {limit:g}s", details=details,
                          timed_out=True)
    if status == sandbox_pb2.EXECUTION_STATUS_ERROR:
        raise NodeFailure("CODE_ERROR", f"{error.type}: {error.message}".strip(": "),
                          details=details)
    name = sandbox_pb2.ExecutionStatus.Name(status).removeprefix("EXECUTION_STATUS_")
    raise NodeFailure("SANDBOX_LIMIT", f"the code was stopped: {name}"
                                       + (f" ({error.message})" if error.message else ""),
                      details=details)


async def _component(ex: "Execution", ref: str, version: int = 0) -> Component:
    component = await ex.worker.component(ex.project_id, ref, version or ex.pins.get(ref, 0))
    if component is None:
        raise NodeFailure("UNKNOWN_COMPONENT", f"component {ref!r} does not exist in this "
                                               "project")
    return component


async def tool(ex: "Execution", node: blueprint_pb2.Node, rec: "NodeRecord",
               ctx: "Context") -> Any:
    component = await _component(ex, node.tool.component, node.tool.version)
    args = ex.arguments("tool", node.tool.args, node.tool.arg_expressions, ctx)
    # Arguments fixed in the blueprint (no templates, no expressions) are validated once.
    static = not node.tool.arg_expressions and not ex.worker.static_value(node.tool.args)[1]
    checked = static and ex.worker.args_checked(node.tool.args, component)
    output = await call_tool(ex, component, args, ex.idempotency_key(rec), ex.timeout_of(node),
                             checked=checked)
    if static and not checked:
        ex.worker.remember_checked(node.tool.args, component)
    return output


async def code(ex: "Execution", node: blueprint_pb2.Node, rec: "NodeRecord",
               ctx: "Context") -> Any:
    spec = node.code
    inputs = ex.arguments("code", spec.args, spec.arg_expressions, ctx)
    if spec.WhichOneof("source_kind") == "component":
        component = await _component(ex, spec.component)
        if component.kind != "code":
            raise NodeFailure("WRONG_COMPONENT_KIND", f"{component.ref} is a {component.kind}, "
                                                      "not code")
        problems = schema_errors(component.field("code", "input_schema"), inputs)
        if problems:
            raise NodeFailure("BAD_ARGUMENTS", "inputs do not match the code's input schema: "
                                               + "; ".join(problems[:5]))
        source = component.field("code", "python_source") or ""
    else:
        source = spec.source
    return await sandbox(ex, inputs=inputs, key=ex.idempotency_key(rec),
                         timeout_s=ex.timeout_of(node), source=source)


# -- models -----------------------------------------------------------------------------------

def _provider(model: str) -> tuple[providers.Provider, str]:
    resolved = providers.resolve(model)
    if resolved is None:
        raise NodeFailure("UNKNOWN_PROVIDER", f"no provider is configured for model {model!r}; "
                                              "use `deterministic` or set "
                                              "ICEOS_LLM_<PROVIDER>_BASE_URL")
    return resolved


async def _complete(provider: providers.Provider, request: providers.ChatRequest
                    ) -> providers.ChatResponse:
    try:
        return await provider.complete(request)
    except providers.ProviderError as exc:
        raise NodeFailure(exc.reason, exc.message) from None


async def llm(ex: "Execution", node: blueprint_pb2.Node, rec: "NodeRecord",
              ctx: "Context") -> Any:
    spec = node.llm
    provider, model = _provider(spec.model)
    messages = []
    if spec.system:
        messages.append(providers.Message("system", ex.render("llm.system", spec.system, ctx)))
    messages.append(providers.Message("user", ex.render("llm.prompt", spec.prompt, ctx)))
    schema = json_format.MessageToDict(spec.response_schema) if spec.HasField(
        "response_schema") else None
    response = await _complete(provider, providers.ChatRequest(
        model=model, messages=tuple(messages), temperature=spec.temperature,
        max_tokens=spec.max_tokens, response_schema=schema))
    rec.usage = response.usage.to_json()
    if schema is None:
        return response.text
    try:
        value = json.loads(response.text)
    except ValueError:
        raise NodeFailure("BAD_MODEL_OUTPUT", "the model's answer is not JSON, but the node "
                                              "has a response_schema") from None
    problems = schema_errors(schema, value)
    if problems:
        raise NodeFailure("BAD_MODEL_OUTPUT", "the model's answer does not match "
                                              f"response_schema: {'; '.join(problems[:5])}")
    return value


_FUNCTION_NAME = re.compile(r"[^A-Za-z0-9_-]")


async def agent(ex: "Execution", node: blueprint_pb2.Node, rec: "NodeRecord",
                ctx: "Context") -> Any:
    spec = node.agent
    system, model, tool_refs, iterations = "", "", [], 0
    if spec.agent:
        base = await _component(ex, spec.agent)
        if base.kind != "agent":
            raise NodeFailure("WRONG_COMPONENT_KIND", f"{base.ref} is a {base.kind}, not an "
                                                      "agent")
        system = base.field("agent", "system_prompt") or ""
        model = base.field("agent", "model") or ""
        tool_refs = list(base.field("agent", "tools") or [])
        iterations = int(base.field("agent", "max_iterations") or 0)
    system = spec.system or system
    model = spec.model or model
    tool_refs = list(spec.tools) or tool_refs
    iterations = spec.max_iterations or iterations or DEFAULT_AGENT_ITERATIONS
    provider, model_name = _provider(model)

    tools: dict[str, tuple[providers.ToolSpec, Component]] = {}
    for ref in tool_refs:
        component = await _component(ex, ref)
        name = _FUNCTION_NAME.sub("_", ref.removeprefix("projects/"))[:64]
        description = (component.builtin.description if component.builtin
                       else component.spec.get("description", ""))
        tools[name] = (providers.ToolSpec(name, ref, description,
                                          component.input_schema or {"type": "object"}),
                       component)
    messages = []
    if system:
        messages.append(providers.Message("system", ex.render("agent.system", system, ctx)))
    messages.append(providers.Message("user", ex.render("agent.prompt", spec.prompt, ctx)))
    usage = providers.Usage()
    steps: list[dict[str, Any]] = []
    key = ex.idempotency_key(rec)
    try:
        for turn in range(1, iterations + 1):
            response = await _complete(provider, providers.ChatRequest(
                model=model_name, messages=tuple(messages),
                tools=tuple(t for t, _ in tools.values())))
            usage = usage + response.usage
            if not response.tool_calls:
                return {"answer": response.text, "turns": turn, "steps": steps}
            messages.append(providers.Message("assistant", response.text,
                                              tool_calls=response.tool_calls))
            for index, call in enumerate(response.tool_calls, 1):
                found = tools.get(call.name) or next(
                    (t for t in tools.values() if t[0].ref == call.name), None)
                if found is None:
                    result: Any = {"error": f"unknown tool {call.name!r}; allowed: "
                                            f"{', '.join(t.ref for t, _ in tools.values())}"}
                    ref = call.name
                else:
                    ref = found[0].ref
                    try:
                        result = await call_tool(ex, found[1], call.arguments,
                                                 f"{key}/{turn}/{index}", ex.timeout_of(node))
                    except NodeFailure as failure:
                        result = {"error": failure.to_json()}
                steps.append({"turn": turn, "tool": ref, "args": call.arguments,
                              "result": result})
                messages.append(providers.Message("tool", json.dumps(result),
                                                  tool_call_id=call.id))
        raise NodeFailure("AGENT_MAX_ITERATIONS",
                          f"the agent did not answer within {iterations} model turns",
                          details={"steps": steps})
    finally:
        rec.usage = usage.to_json()


EXECUTORS = {"tool": tool, "llm": llm, "agent": agent, "code": code}
