"""Model providers: the deterministic provider (unit), and an OpenAI-compatible provider driven by
a real orchestrator process against a local server that speaks the chat-completions protocol
(the one place a vendor is stood in for: we cannot reach vendors from tests)."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

from services.orchestrator import providers
from services.stack.embedded import free_port
from tests.support.runs import (State, nodes, orchestrator_env, orchestrators, py,
                                run_and_wait, stub)
from tests.support.stack import create_tenant

KEY = "sk-test-not-a-real-key"


def complete(request: providers.ChatRequest) -> providers.ChatResponse:
    provider, _ = providers.resolve("deterministic")  # type: ignore[misc]
    return asyncio.run(provider.complete(request))


def test_deterministic_provider_is_a_pure_function_of_the_conversation() -> None:
    ask = providers.ChatRequest("deterministic", (providers.Message("user", "hello there"),))
    first, again = complete(ask), complete(ask)
    assert first == again and first.text.startswith("Deterministic answer ")
    assert first.usage.prompt_tokens == 2 and first.usage.completion_tokens > 0
    other = complete(providers.ChatRequest("deterministic",
                                           (providers.Message("user", "hello here"),)))
    assert other.text != first.text
    shaped = complete(providers.ChatRequest(
        "deterministic", (providers.Message("user", "x"),),
        response_schema={"type": "object", "properties": {"n": {"type": "integer"},
                                                          "tags": {"type": "array"}}}))
    value = json.loads(shaped.text)
    assert isinstance(value["n"], int) and isinstance(value["tags"], list)


def test_provider_resolution() -> None:
    assert providers.resolve("nobody/model", {}) is None
    assert providers.resolve("bad", {}) is None
    provider, model = providers.resolve(  # type: ignore[misc]
        "local/llama3", {"ICEOS_LLM_LOCAL_BASE_URL": "http://127.0.0.1:1/v1"})
    assert provider.name == "local" and model == "llama3"


class FakeChatServer:
    """Speaks POST /v1/chat/completions: calls the first offered tool once, then answers with
    what the tool returned. `fail_next` answers HTTP 503 that many times first."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_next = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                owner.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                if owner.fail_next:
                    owner.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    self.wfile.write(b'{"error": "overloaded"}')
                    return
                tool_results = [m for m in body["messages"] if m["role"] == "tool"]
                if body.get("tools") and not tool_results:
                    message = {"role": "assistant", "content": None, "tool_calls": [{
                        "id": "call_1", "type": "function", "function": {
                            "name": body["tools"][0]["function"]["name"],
                            "arguments": json.dumps({"expression": "input + 1", "input": 41})}}]}
                elif tool_results:
                    message = {"role": "assistant",
                               "content": "tool said " + tool_results[-1]["content"]}
                else:
                    message = {"role": "assistant",
                               "content": "echo: " + body["messages"][-1]["content"]}
                payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "message": message,
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 11, "completion_tokens": 7,
                                     "total_tokens": 18}}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_vendor(fresh_database, tmp_path):  # type: ignore[no-untyped-def]
    with FakeChatServer() as server:
        env = orchestrator_env(fresh_database, None, tmp_path,
                               ICEOS_LLM_FAKE_BASE_URL=server.url, ICEOS_LLM_FAKE_API_KEY=KEY)
        with orchestrators(1, env, tmp_path) as (proc,):
            with grpc.insecure_channel(proc.address) as channel:
                yield server, stub(channel), create_tenant(fresh_database), proc


def test_llm_and_agent_through_an_openai_compatible_endpoint(fake_vendor) -> None:  # type: ignore[no-untyped-def]
    server, api, tenant, proc = fake_vendor
    spec = {"nodes": [
        {"id": "ask", "llm": {"model": "fake/gpt-test", "system": "be brief",
                              "prompt": "Hi {{ inputs.name }}", "temperature": 0.2}},
        {"id": "agent", "agent": {"model": "fake/gpt-test", "prompt": "add one",
                                  "tools": ["builtins/json_transform"]}}]}
    run = run_and_wait(api, tenant, spec, {"name": "Ada"})
    assert run.state == State.RUN_STATE_SUCCEEDED, run.error
    out = py(run.output)
    assert out["ask"] == "echo: Hi Ada"
    assert out["agent"]["answer"] == 'tool said {"result": 42}'
    assert out["agent"]["steps"][0]["tool"] == "builtins/json_transform"
    assert nodes(run)["ask"].usage.total_tokens == 18
    assert nodes(run)["agent"].usage.total_tokens == 36  # two model turns
    first = next(r for r in server.requests if not r.get("tools"))
    assert first["model"] == "gpt-test" and first["temperature"] == 0.2
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert all(h.get("Authorization") == f"Bearer {KEY}" for h in server.headers)
    tools = [r for r in server.requests if r.get("tools")][0]["tools"]
    assert tools[0]["function"]["parameters"]["required"] == ["expression"]
    assert KEY not in proc.logs()


def test_vendor_errors_are_retried_then_reported(fake_vendor) -> None:  # type: ignore[no-untyped-def]
    server, api, tenant, _ = fake_vendor
    server.fail_next = 1
    spec = {"nodes": [{"id": "ask", "retry": {"maxAttempts": 2, "initialBackoff": "0.1s"},
                       "llm": {"model": "fake/gpt-test", "prompt": "again"}}]}
    run = run_and_wait(api, tenant, spec)
    assert run.state == State.RUN_STATE_SUCCEEDED
    assert nodes(run)["ask"].attempt == 2
    server.fail_next = 5
    run = run_and_wait(api, tenant, {"nodes": [{"id": "ask", "llm": {
        "model": "fake/gpt-test", "prompt": "again"}}]})
    assert run.state == State.RUN_STATE_FAILED
    assert run.error.reason == "PROVIDER_UNAVAILABLE" and "503" in run.error.message
