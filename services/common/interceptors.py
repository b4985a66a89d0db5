"""The cross-cutting part of every RPC, in one server interceptor: request id and JSON logs,
authentication and the method's declared access rule, tenant scoping of resource names, the
audit record of writes, metrics, and the mapping of domain errors to gRPC statuses.

Access rules live in the contract (`option (iceos.auth.v1.access)` on each RPC); a method without
one cannot be called (fail closed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

import grpc
from google.api import annotations_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from iceos.auth.v1 import access_pb2
from prometheus_client import Counter, Histogram

from . import errors, grpc_errors, logs, wire
from .auth import Authenticator
from .db import Database
from .principal import Principal, Role, reset_current, set_current

log = logging.getLogger(__name__)

AUDIT_LINGER_S = 0.02
_AUDIT_INSERT = """
INSERT INTO audit_log (time, organization_id, project_id, actor, method, resource, outcome,
                       request_id, details)
SELECT time, organization_id, project_id, actor, method, resource, outcome, request_id, details
FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (
       time timestamptz, organization_id text, project_id text, actor text, method text,
       resource text, outcome text, request_id text, details jsonb)) WITH ORDINALITY
     AS x(time, organization_id, project_id, actor, method, resource, outcome, request_id,
          details, n)
ORDER BY n
"""

# Methods that are not iceOS APIs and carry no iceOS token. The ext_authz Check authenticates
# the token it is asked about itself.
EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    "/envoy.service.auth.v3.Authorization/",
)

RPC_TOTAL = Counter("iceos_rpc_total", "RPCs handled", ["method", "code"])
RPC_SECONDS = Histogram("iceos_rpc_seconds", "RPC latency", ["method"],
                        buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                 5, 10, 30))


class AccessRules:
    """Reads and caches each method's AccessRule from the descriptor pool, and whether the
    method writes (audited): its HTTP binding is not a GET and its rule does not say
    read_only, or, without a binding, it needs the editor role or more."""

    def __init__(self) -> None:
        self._cache: dict[str, access_pb2.AccessRule | None] = {}
        self._writes: dict[str, bool] = {}

    def get(self, method: str) -> access_pb2.AccessRule | None:
        if method not in self._cache:
            full = method.lstrip("/").replace("/", ".")
            try:
                options = descriptor_pool.Default().FindMethodByName(full).GetOptions()
            except KeyError:
                self._cache[method] = None
                self._writes[method] = True
            else:
                has = options.HasExtension(access_pb2.access)
                rule = options.Extensions[access_pb2.access] if has else None
                self._cache[method] = rule
                if rule is not None and rule.read_only:
                    self._writes[method] = False
                elif options.HasExtension(annotations_pb2.http):
                    verb = options.Extensions[annotations_pb2.http].WhichOneof("pattern")
                    self._writes[method] = verb != "get"
                else:
                    self._writes[method] = rule is None or rule.role >= access_pb2.ROLE_EDITOR
        return self._cache[method]

    def input_type(self, method: str) -> Descriptor | None:
        """The declared request message of `method`, if the descriptor pool knows it."""
        try:
            full = method.lstrip("/").replace("/", ".")
            return descriptor_pool.Default().FindMethodByName(full).input_type
        except KeyError:
            return None

    def writes(self, method: str) -> bool:
        self.get(method)
        return self._writes[method]


def resource_names(request: Message) -> list[tuple[str, str]]:
    """(field path, value) of the request's resource-name fields: `parent`, `name`, and the
    `name` of a resource message carried by Update requests."""
    found: list[tuple[str, str]] = []
    for field, value in request.ListFields():
        if field.name in ("parent", "name") and isinstance(value, str):
            found.append((field.name, value))
        elif field.message_type is not None and not field.is_repeated \
                and isinstance(value, Message):
            inner = value.DESCRIPTOR.fields_by_name.get("name")
            if inner is not None and inner.type == inner.TYPE_STRING:
                nested = getattr(value, "name")
                if nested:
                    found.append((f"{field.name}.name", nested))
    return found


def project_in(name: str) -> str | None:
    parts = name.split("/")
    if len(parts) >= 2 and parts[0] == "projects":
        return parts[1]
    return None


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator | None, db: Database | None) -> None:
        self.authenticator = authenticator
        self.db = db
        self.rules = AccessRules()
        # Audit records are written after the response is sent (they are not part of the
        # caller's latency), everything queued so far in one INSERT: a burst of writes costs
        # one statement and one commit, not one each. Shutdown waits for them (drain_audit)
        # so a graceful stop loses none.
        self._audit_queue: list[dict[str, Any]] = []
        self._audit_task: asyncio.Task[None] | None = None

    def audit_later(self, record: dict[str, Any]) -> None:
        self._audit_queue.append(record)
        if self._audit_task is None:
            self._audit_task = asyncio.get_running_loop().create_task(self._write_audit())

    async def _write_audit(self) -> None:
        try:
            await asyncio.sleep(AUDIT_LINGER_S)  # let a burst of calls share the INSERT
            while self._audit_queue:
                records, self._audit_queue = self._audit_queue, []
                try:
                    assert self.db is not None
                    async with self.db.connection() as conn:
                        await conn.execute(_AUDIT_INSERT, (json.dumps(records),))
                except Exception:
                    log.error("could not write %d audit records (%s)", len(records),
                              ", ".join(sorted({r["method"] for r in records})), exc_info=True)
        finally:
            self._audit_task = None

    async def drain_audit(self) -> None:
        while self._audit_task is not None:
            await asyncio.gather(self._audit_task, return_exceptions=True)

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        exempt = method.startswith(EXEMPT_PREFIXES)
        implemented = handler is not None
        if handler is None:
            if exempt:
                return None
            # A method this server does not implement still authenticates and checks its
            # declared rule first: an anonymous caller learns nothing, not even which methods
            # exist here (fail closed). Then UNIMPLEMENTED.
            handler = _unimplemented(method)
        metadata = dict(handler_call_details.invocation_metadata or ())
        rule = None if exempt else self.rules.get(method)
        # The call parses the request itself (after authentication), so that bytes which are
        # not the declared message are INVALID_ARGUMENT, not gRPC's own INTERNAL.
        call = _Call(self, method, metadata, exempt, rule, handler.request_deserializer)
        call.implemented = implemented
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                call.wrap_unary(handler.unary_unary),
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                call.wrap_stream(handler.unary_stream),
                response_serializer=handler.response_serializer)
        # Client-streaming methods: none of ours today; health and reflection only.
        if not exempt:
            log.error("refusing client-streaming method without interceptor support: %s",
                      method)
            return None
        return handler


class _Call:
    """The per-call state of the interceptor."""

    def __init__(self, owner: ServiceInterceptor, method: str, metadata: dict[str, Any],
                 exempt: bool, rule: access_pb2.AccessRule | None,
                 parse: Callable[[bytes], Any] | None = None) -> None:
        self.owner = owner
        self.parse = parse
        self.implemented = True
        self.method = method
        self.metadata = metadata
        self.exempt = exempt
        self.rule = rule
        self.request_id = str(metadata.get("x-request-id") or uuid.uuid4().hex)[:128]
        self.principal: Principal | None = None
        self.resource = ""
        self.project: str | None = None
        # Name of the resource a write returned (e.g. the token CreateToken minted).
        self.result = ""

    def _parsed(self, raw: Any) -> Any:
        if self.parse is None or not isinstance(raw, bytes):
            return raw
        try:
            return self.parse(raw)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the caller's input
            declared = self.owner.rules.input_type(self.method)
            if declared is not None:
                raise wire.diagnose(declared, raw, exc) from None
            raise errors.InvalidArgument(
                f"the request body is not a valid message for {self.method}",
                reason="MALFORMED_REQUEST") from None

    async def _admit(self, raw: Any) -> tuple[Principal | None, Any]:
        """Authenticate, check the declared rule, parse, check the named projects: the
        principal (None for exempt and public methods) and the parsed request."""
        if self.exempt or (self.rule is not None and self.rule.public):
            return None, self._parsed(raw)
        principal = await self._authenticate()
        request = self._parsed(raw)
        if not isinstance(request, Message):  # a method in no contract: nothing to scope
            return principal, request
        for field, value in resource_names(request):
            self.resource = self.resource or value
            project = project_in(value)
            if project is not None:
                self.project = self.project or project
                await self.owner.authenticator.check_project(principal, project)  # type: ignore[union-attr]
        return principal, request

    async def _authenticate(self) -> Principal:
        rule = self.rule
        if self.owner.authenticator is None:
            raise errors.Unavailable("authentication is not available")
        # Who first, then what: an anonymous caller gets UNAUTHENTICATED whatever it called.
        principal = await self.owner.authenticator.authenticate(self.metadata.get("authorization"))
        self.principal = principal
        if rule is None and not self.implemented:
            return principal  # in no contract: the handler answers UNIMPLEMENTED
        if rule is None or rule.role == access_pb2.ROLE_UNSPECIFIED:
            raise errors.PermissionDenied(f"{self.method} declares no access rule",
                                          reason="NO_ACCESS_RULE")
        principal.require(Role(rule.role))
        if rule.organization_scope and not principal.organization_wide:
            raise errors.PermissionDenied("this call needs an organization-wide token",
                                          reason="ORGANIZATION_SCOPE_REQUIRED")
        return principal

    def _enter(self) -> tuple[Any, float]:
        return logs.request_id_var.set(self.request_id), time.perf_counter()

    async def _fail(self, exc: BaseException, context: grpc.aio.ServicerContext) -> str:
        if isinstance(exc, errors.IceError):
            status = grpc_errors.to_status(exc)
            if isinstance(exc, (errors.Unavailable,)):
                log.warning("%s unavailable: %s", self.method, exc.message)
        else:
            log.error("unhandled error in %s", self.method, exc_info=exc)
            status = grpc_errors.internal_status(self.request_id)
        await context.abort_with_status(status)
        return status.code.name  # pragma: no cover - abort raises

    async def _finish(self, code: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        RPC_TOTAL.labels(self.method, code).inc()
        RPC_SECONDS.labels(self.method).observe(elapsed)
        # Health checks arrive every second from the edge: keep them out of INFO logs.
        log.log(logging.DEBUG if self.exempt else logging.INFO, "rpc",
                extra={"method": self.method, "code": code, "ms": round(elapsed * 1000, 3)})
        # Every write by an authenticated caller, whatever its outcome (denied ones included).
        principal = self.principal
        if (principal is not None and self.owner.db is not None
                and self.owner.rules.writes(self.method)):
            self.owner.audit_later({
                "time": datetime.now(timezone.utc).isoformat(),
                "organization_id": principal.organization_id,
                "project_id": self.project or principal.project_id,
                "actor": principal.token_name, "method": self.method, "resource": self.resource,
                "outcome": code, "request_id": self.request_id,
                "details": {"result": self.result} if self.result else {}})

    def wrap_unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def unary(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            rid_token, started = self._enter()
            code = "OK"
            principal_token = None
            try:
                principal, request = await self._admit(raw)
                principal_token = set_current(principal)
                context.set_trailing_metadata((("x-request-id", self.request_id),))
                response = await behavior(request, context)
                result = getattr(response, "name", "")
                self.result = result if isinstance(result, str) else ""
                return response
            except (grpc.aio.AbortError, asyncio.CancelledError):
                code = "ABORTED_BY_HANDLER"
                raise
            except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
                code = _code_name(exc)
                await self._fail(exc, context)
            finally:
                if principal_token is not None:
                    reset_current(principal_token)
                await self._finish(code, started)
                logs.request_id_var.reset(rid_token)

        return unary

    def wrap_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def stream(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            rid_token, started = self._enter()
            code = "OK"
            principal_token = None
            try:
                principal, request = await self._admit(raw)
                principal_token = set_current(principal)
                async for item in behavior(request, context):
                    yield item
            except (grpc.aio.AbortError, asyncio.CancelledError):
                code = "CANCELLED"
                raise
            except Exception as exc:  # noqa: BLE001
                code = _code_name(exc)
                await self._fail(exc, context)
            finally:
                if principal_token is not None:
                    reset_current(principal_token)
                await self._finish(code, started)
                logs.request_id_var.reset(rid_token)

        return stream


def _unimplemented(method: str) -> grpc.RpcMethodHandler:
    """A handler for a method this server lacks, shaped like the contract's declaration when
    there is one (so the request's resource names can still be checked)."""
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented here")

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await refuse(request, context)
        yield  # pragma: no cover - abort raises

    try:
        declared = descriptor_pool.Default().FindMethodByName(
            method.lstrip("/").replace("/", "."))
    except KeyError:
        return grpc.unary_unary_rpc_method_handler(refuse)
    parse = message_factory.GetMessageClass(declared.input_type).FromString
    if declared.server_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, request_deserializer=parse)
    return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=parse)


def _code_name(exc: BaseException) -> str:
    if isinstance(exc, errors.IceError):
        return grpc_errors.to_status(exc).code.name
    return "INTERNAL"
