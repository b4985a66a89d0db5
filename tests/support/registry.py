"""Helpers for registry tests: stubs, blueprint and component builders, JSON calls through the
edge, and reading rich error details."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import grpc
from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2, component_pb2, registry_pb2_grpc

from services.common.blueprint.authoring import blueprint_from_data


def stub(channel: grpc.Channel) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(channel)


def blueprint(data: dict[str, Any]) -> blueprint_pb2.Blueprint:
    return blueprint_from_data(data)


def hello(name: str = "hello") -> blueprint_pb2.Blueprint:
    return blueprint({"displayName": name, "nodes": [
        {"id": "greet", "llm": {"model": "deterministic",
                                "prompt": "Hello {{ inputs.name }}"}},
        {"id": "shout", "dependsOn": ["greet"], "tool": {
            "component": "builtins/template",
            "args": {"template": "{{ nodes.greet.output }}!"}}}]})


def component(data: dict[str, Any]) -> component_pb2.Component:
    return json_format.ParseDict(data, component_pb2.Component())


def python_tool(description: str = "count the words in a text", **extra: Any
                ) -> component_pb2.Component:
    return component({"displayName": extra.pop("display_name", "Word count"),
                      "description": description, "tool": {
                          "pythonSource": "def main(inputs):\n"
                                          "    return {'count': len(inputs['text'].split())}\n",
                          "inputSchema": {"type": "object", "required": ["text"],
                                          "properties": {"text": {"type": "string"}},
                                          "additionalProperties": False},
                          "outputSchema": {"type": "object"}}, **extra})


def http(edge_url: str, method: str, path: str, headers: dict[str, str],
         body: Any = None, timeout: float = 20) -> tuple[int, Any]:
    """(HTTP status, parsed JSON body) of a JSON call through the edge."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{edge_url}{path}", data=data, method=method,
                                     headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")
