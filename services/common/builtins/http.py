"""`http_request`: GET or POST a URL from a run, safely.

The host is resolved first and EVERY address it resolves to must be public (not private,
loopback, link-local — which covers cloud metadata at 169.254.169.254 —, multicast, reserved or
unspecified), unless ICEOS_HTTP_ALLOWLIST (comma-separated host names, IPs or CIDRs) allows it.
The connection then goes to the address that was checked, so a DNS answer that changes between
the check and the connect (DNS rebinding) cannot redirect it. Redirects are not followed: a 3xx
comes back with its Location header, and a follow-up request is checked again.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .catalog import BuiltinTool, ToolContext, ToolError, register

ALLOWLIST_ENV = "ICEOS_HTTP_ALLOWLIST"
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 30.0
DEFAULT_MAX_BYTES = 1024 * 1024
MAX_BYTES = 10 * 1024 * 1024
MAX_REQUEST_BODY = 5 * 1024 * 1024
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Allowlist:
    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, text: str) -> "Allowlist":
        hosts, networks = set(), []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    @classmethod
    def from_env(cls) -> "Allowlist":
        return cls.parse(os.environ.get(ALLOWLIST_ENV, ""))

    def allows(self, host: str, address: IPAddress) -> bool:
        return host.lower().rstrip(".") in self.hosts or any(
            address in net for net in self.networks if net.version == address.version)


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def resolve_checked(host: str, port: int, allowlist: Allowlist) -> list[IPAddress]:
    """Every address of `host`, or ToolError if any of them is not allowed."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ToolError(f"cannot resolve {host!r}: {exc.strerror}", "DNS_ERROR",
                        retryable=True) from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    for address in addresses:
        if not is_public(address) and not allowlist.allows(host, address):
            raise ToolError(
                f"refused: {host!r} resolves to {address}, a private, loopback, link-local or "
                f"otherwise non-public address; an operator can allow it with {ALLOWLIST_ENV}",
                "ADDRESS_REFUSED")
    return addresses


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _number(args: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = args.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ToolError(f"{name} must be a number between {low:g} and {high:g}", "BAD_ARGUMENT")
    return float(value)


async def http_request(args: dict[str, Any], ctx: ToolContext,
                       allowlist: Allowlist | None = None) -> dict[str, Any]:
    url = args.get("url")
    if not isinstance(url, str) or not url:
        raise ToolError("url is required", "BAD_ARGUMENT")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(f"{url!r} is not an http(s) URL", "BAD_ARGUMENT")
    method = str(args.get("method", "GET")).upper()
    if method not in METHODS:
        raise ToolError(f"method must be one of {', '.join(METHODS)}", "BAD_ARGUMENT")
    timeout = _number(args, "timeout_s", DEFAULT_TIMEOUT_S, 0.1, MAX_TIMEOUT_S)
    max_bytes = int(_number(args, "max_bytes", DEFAULT_MAX_BYTES, 1, MAX_BYTES))
    headers = {str(k): str(v) for k, v in (args.get("headers") or {}).items()
               if str(k).lower() not in _HOP_HEADERS}
    body = args.get("body")
    payload: bytes | None = None
    if body is not None:
        if isinstance(body, str):
            payload = body.encode()
        else:
            payload = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        if len(payload) > MAX_REQUEST_BODY:
            raise ToolError(f"the body is larger than {MAX_REQUEST_BODY} bytes", "BAD_ARGUMENT")
    headers.setdefault("User-Agent", "iceOS-http_request/1")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = await resolve_checked(host, port, allowlist or Allowlist.from_env())
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query

    def fetch() -> dict[str, Any]:
        cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        connection = cls(host, port, str(addresses[0]), timeout)
        try:
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read(max_bytes + 1) if method != "HEAD" else b""
            truncated = len(data) > max_bytes
            data = data[:max_bytes]
            content_type = response.getheader("Content-Type", "") or ""
            charset = "utf-8"
            if "charset=" in content_type:
                charset = content_type.split("charset=", 1)[1].split(";")[0].strip() or charset
            try:
                text = data.decode(charset, errors="replace")
            except LookupError:
                text = data.decode("utf-8", errors="replace")
            result: dict[str, Any] = {
                "status": response.status, "url": url, "truncated": truncated,
                "headers": {k.lower(): v for k, v in response.getheaders()}, "body": text}
            if "json" in content_type and not truncated:
                try:
                    result["json"] = json.loads(text)
                except ValueError:
                    pass
            return result
        finally:
            connection.close()

    try:
        return await asyncio.wait_for(asyncio.to_thread(fetch), timeout + 1)
    except (TimeoutError, socket.timeout):
        raise ToolError(f"{url} did not answer within {timeout:g}s", "TIMEOUT",
                        retryable=True) from None
    except ssl.SSLError as exc:
        raise ToolError(f"TLS with {host} failed: {exc.reason}", "TLS_ERROR") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ToolError(f"request to {url} failed: {exc.__class__.__name__}: {exc}",
                        "HTTP_ERROR", retryable=True) from None


register(BuiltinTool(
    name="http_request",
    display_name="HTTP request",
    description="Fetch a web page or call a web API over HTTP(S): GET or POST a URL with "
                "headers and a body, and get back the status, headers and the response body "
                "(text, and parsed JSON when the response is JSON). Download the contents of a "
                "URL. Refuses private and internal addresses.",
    input_schema={
        "type": "object", "required": ["url"], "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "pattern": "^https?://"},
            "method": {"enum": list(METHODS)},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {"description": "a string, or JSON sent as application/json"},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
            "max_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_BYTES}}},
    output_schema={
        "type": "object", "required": ["status", "headers", "body", "truncated"],
        "properties": {"status": {"type": "integer"}, "url": {"type": "string"},
                       "headers": {"type": "object"}, "body": {"type": "string"},
                       "json": {}, "truncated": {"type": "boolean"}}},
    run=lambda args, ctx: http_request(args, ctx), tags=("web", "http", "network")))
