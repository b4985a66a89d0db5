"""Any endpoint speaking the OpenAI chat-completions protocol (OpenAI, vLLM, Ollama, LiteLLM…).

The key is sent as a Bearer token and never logged or put in an error message."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from .base import ChatRequest, ChatResponse, Message, ProviderError, ToolCall, Usage

TIMEOUT_S = 120.0


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                             for c in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


class OpenAICompatibleProvider:
    def __init__(self, name: str, base_url: str, api_key: str = "") -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model,
                                "messages": [_message(m) for m in request.messages],
                                "temperature": request.temperature}
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        if request.tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in request.tools]
        if request.response_schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "response", "schema": request.response_schema}}
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        http = urllib.request.Request(f"{self.base_url}/chat/completions",
                                      data=json.dumps(body).encode(), headers=headers,
                                      method="POST")
        try:
            with urllib.request.urlopen(http, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            retryable = exc.code == 429 or exc.code >= 500
            raise ProviderError("PROVIDER_UNAVAILABLE" if retryable else "PROVIDER_ERROR",
                                f"{self.name} answered HTTP {exc.code}: {detail}",
                                retryable=retryable) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ProviderError("PROVIDER_UNAVAILABLE",
                                f"{self.name} is unreachable: {getattr(exc, 'reason', exc)}",
                                retryable=True) from None
        except ValueError:
            raise ProviderError("PROVIDER_ERROR", f"{self.name} answered with invalid JSON",
                                retryable=True) from None

    async def complete(self, request: ChatRequest) -> ChatResponse:
        data = await asyncio.to_thread(self._post, self._body(request))
        try:
            message = data["choices"][0]["message"]
            calls = []
            for call in message.get("tool_calls") or []:
                raw = call["function"].get("arguments") or "{}"
                arguments = json.loads(raw) if isinstance(raw, str) else raw
                calls.append(ToolCall(id=call.get("id", ""), name=call["function"]["name"],
                                      arguments=arguments if isinstance(arguments, dict) else {}))
            usage = data.get("usage") or {}
            return ChatResponse(text=message.get("content") or "", tool_calls=tuple(calls),
                                usage=Usage(int(usage.get("prompt_tokens", 0)),
                                            int(usage.get("completion_tokens", 0))),
                                model=data.get("model", request.model))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ProviderError("PROVIDER_ERROR", f"{self.name} answered in an unexpected shape "
                                                  f"({exc.__class__.__name__})",
                                retryable=True) from None
