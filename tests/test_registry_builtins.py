"""The built-in tool catalog: real behaviour. http_request talks to a real HTTP server on
127.0.0.1 (allowed through ICEOS_HTTP_ALLOWLIST) and refuses non-public addresses without it;
refusals happen before any connection is attempted."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.common import builtins
from services.common.builtins import ToolContext, ToolError
from services.common.builtins.http import Allowlist, is_public

CTX = ToolContext(project_id="p")


def run(name: str, args: dict) -> dict:  # type: ignore[type-arg]
    tool = builtins.get(name)
    assert tool is not None
    return asyncio.run(tool.run(args, CTX))


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/json":
            self._send(200, json.dumps({"hello": "world"}).encode(), "application/json")
        elif self.path == "/big":
            self._send(200, b"x" * 5000, "text/plain")
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, b"late", "text/plain")
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"nope", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        echo = {"body": body.decode(), "type": self.headers["Content-Type"],
                "token": self.headers.get("X-Token")}
        self._send(201, json.dumps(echo).encode(), "application/json; charset=utf-8")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_request_to_an_allowed_local_server(server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ICEOS_HTTP_ALLOWLIST", "example.internal, 127.0.0.0/8")
    got = run("http_request", {"url": f"{server}/json"})
    assert got["status"] == 200 and got["json"] == {"hello": "world"}
    assert got["truncated"] is False and got["headers"]["content-type"] == "application/json"

    posted = run("http_request", {"url": f"{server}/echo", "method": "POST",
                                  "headers": {"X-Token": "t-1"}, "body": {"a": [1, 2]}})
    assert posted["status"] == 201
    assert posted["json"] == {"body": '{"a": [1, 2]}', "type": "application/json",
                              "token": "t-1"}

    capped = run("http_request", {"url": f"{server}/big", "max_bytes": 100})
    assert capped["truncated"] is True and capped["body"] == "x" * 100

    missing = run("http_request", {"url": f"{server}/missing"})
    assert missing["status"] == 404 and missing["body"] == "nope"

    # Redirects are returned, not followed (the next hop would be checked again).
    moved = run("http_request", {"url": f"{server}/moved"})
    assert moved["status"] == 302 and "169.254.169.254" in moved["headers"]["location"]

    started = time.monotonic()
    with pytest.raises(ToolError) as info:
        run("http_request", {"url": f"{server}/slow", "timeout_s": 0.5})
    assert info.value.reason == "TIMEOUT" and time.monotonic() - started < 2.5


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/", "http://localhost:9/", "http://[::1]:9/",
    "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/", "http://192.168.0.1/",
    "http://[::ffff:127.0.0.1]:9/", "http://0.0.0.0:9/", "http://100.64.0.1/",
    "http://[fd00:ec2::254]/",
])
def test_http_request_refuses_non_public_addresses(url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("ICEOS_HTTP_ALLOWLIST", raising=False)
    with pytest.raises(ToolError) as info:
        run("http_request", {"url": url})
    assert info.value.reason == "ADDRESS_REFUSED"
    assert "ICEOS_HTTP_ALLOWLIST" in info.value.message


def test_http_request_refuses_the_local_server_without_the_allowlist(server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ICEOS_HTTP_ALLOWLIST", "10.0.0.0/8")  # allows something else
    with pytest.raises(ToolError) as info:
        run("http_request", {"url": f"{server}/json"})
    assert info.value.reason == "ADDRESS_REFUSED"


def test_http_request_bad_arguments() -> None:
    for args in [{"url": "file:///etc/passwd"}, {"url": "ftp://x/"}, {},
                 {"url": "http://127.0.0.1/", "method": "TRACE"},
                 {"url": "http://127.0.0.1/", "timeout_s": 600}]:
        with pytest.raises(ToolError) as info:
            run("http_request", args)
        assert info.value.reason == "BAD_ARGUMENT", args


def test_allowlist_and_public_address_rules() -> None:
    allow = Allowlist.parse(" api.internal. ,192.168.1.0/24,::1 ,")
    assert allow.allows("API.internal", ipaddress.ip_address("10.0.0.1"))
    assert allow.allows("x", ipaddress.ip_address("192.168.1.77"))
    assert allow.allows("x", ipaddress.ip_address("::1"))
    assert not allow.allows("x", ipaddress.ip_address("192.168.2.1"))
    assert is_public(ipaddress.ip_address("93.184.216.34"))
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert not is_public(ipaddress.ip_address("224.0.0.1"))


def test_text_split() -> None:
    text = ("First paragraph has a few words. It has two sentences.\n\n"
            "Second paragraph is here.\n\n" + "word " * 60)
    out = run("text_split", {"text": text, "max_chars": 60})
    assert out["count"] == len(out["chunks"]) >= 4
    assert all(len(c) <= 60 for c in out["chunks"])
    # Paragraphs stay whole when they fit; the long run of words is cut between words.
    assert out["chunks"][:2] == ["First paragraph has a few words. It has two sentences.",
                                 "Second paragraph is here."]
    assert all(set(c.split()) == {"word"} for c in out["chunks"][2:])
    # Nothing is lost: every word is still there, in order.
    assert " ".join(out["chunks"]).split() == text.split()
    overlapped = run("text_split", {"text": "abcdefghij" * 10, "max_chars": 30, "overlap": 10})
    assert all(len(c) <= 30 for c in overlapped["chunks"])
    assert overlapped["chunks"][1].startswith(overlapped["chunks"][0][-10:])
    assert run("text_split", {"text": "   "}) == {"chunks": [], "count": 0}
    with pytest.raises(ToolError):
        run("text_split", {"text": "x", "max_chars": 10, "overlap": 10})


def test_regex_extract() -> None:
    out = run("regex_extract", {"text": "mail ada@example.com or BOB@example.org today",
                                "pattern": r"(?P<user>[a-z]+)@(?P<domain>[a-z.]+)",
                                "ignore_case": True})
    assert [m["match"] for m in out["matches"]] == ["ada@example.com", "BOB@example.org"]
    assert out["matches"][1]["named"] == {"user": "BOB", "domain": "example.org"}
    assert out["matches"][0]["start"] == 5 and out["count"] == 2
    assert run("regex_extract", {"text": "a1b22c333", "pattern": r"\d+",
                                 "max_matches": 2})["count"] == 2
    # Catastrophic backtracking in other engines; linear in RE2.
    started = time.monotonic()
    out = run("regex_extract", {"text": "a" * 100_000 + "b", "pattern": r"(a+)+$"})
    assert out["count"] == 0 and time.monotonic() - started < 1
    with pytest.raises(ToolError) as info:
        run("regex_extract", {"text": "aa", "pattern": r"(a)\1"})
    assert info.value.reason == "BAD_PATTERN"


def test_json_schema_validate() -> None:
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer",
                                                                 "minimum": 0}}}
    assert run("json_schema_validate", {"schema": schema,
                                        "instance": {"name": "ada", "age": 36}}) == \
        {"valid": True, "errors": []}
    out = run("json_schema_validate", {"schema": schema, "instance": {"age": -1}})
    assert out["valid"] is False
    assert sorted(e["path"] for e in out["errors"]) == ["$", "$.age"]
    with pytest.raises(ToolError) as info:
        run("json_schema_validate", {"schema": {"type": "strnig"}, "instance": 1})
    assert info.value.reason == "BAD_SCHEMA"


def test_every_builtin_declares_valid_schemas() -> None:
    from services.common.blueprint.validate import schema_problems
    names = [t.name for t in builtins.all_tools()]
    assert {"http_request", "text_split", "regex_extract", "json_schema_validate",
            "template", "json_transform"} <= set(names)
    for tool in builtins.all_tools():
        assert schema_problems(tool.input_schema) == [], tool.name
        assert schema_problems(tool.output_schema) == [], tool.name
        assert tool.description and tool.display_name
