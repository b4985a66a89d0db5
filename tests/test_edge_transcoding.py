"""gRPC-JSON transcoding at the edge: server streams become NDJSON, gRPC errors become JSON with
their details, the request reaches the service unchanged (token and all), and every public
service in the descriptor is routed and transcoded. The orchestrator upstream here is a small gRPC
server speaking the OrchestratorService contract, so the edge's streaming path is tested before
(and independently of) the real run engine; auth is the real registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from iceos.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc, run_pb2

from services.common.principal import Role
from services.stack import envoy
from services.stack.embedded import free_port
from tests.support.edge_client import request
from tests.support.stack import Edge, LiveStack, Tenant


class Orchestrator(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.requests: list[object] = []

    def StreamRunEvents(self, request, context):  # type: ignore[no-untyped-def]
        self.metadata.append(dict(context.invocation_metadata()))
        self.requests.append(request)
        for sequence in range(1, 4):
            payload = struct_pb2.Struct()
            payload.update({"n": sequence})
            yield run_pb2.RunEvent(run=request.name, sequence=sequence, payload=payload,
                                   type=run_pb2.RUN_EVENT_TYPE_NODE_SUCCEEDED, node=f"n{sequence}")

    def GetRun(self, request, context):  # type: ignore[no-untyped-def]
        self.metadata.append(dict(context.invocation_metadata()))
        info = error_details_pb2.ErrorInfo(reason="RUN_NOT_FOUND", domain="iceos.dev")
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="name", description="no run")])
        status = status_pb2.Status(code=code_pb2.NOT_FOUND, message=f"{request.name} not found")
        for detail in (info, bad):
            status.details.add().Pack(detail)
        context.abort_with_status(rpc_status.to_status(status))


@pytest.fixture
def fake_orchestrator() -> Iterator[tuple[Orchestrator, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    servicer = Orchestrator()
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)
    checks = health.HealthServicer()
    checks.set("iceos.orchestrator.v1.OrchestratorService",
               health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    yield servicer, port
    server.stop(0)


@pytest.fixture
def edge(stack: LiveStack, fake_orchestrator, tmp_path: Path) -> Iterator[Edge]:  # type: ignore[no-untyped-def]
    assert stack.edge is not None
    upstreams = dict(stack.edge.upstreams, orchestrator=("127.0.0.1", fake_orchestrator[1]))
    edge = Edge(upstreams, tmp_path).start()
    yield edge
    edge.stop()


def test_server_streams_are_ndjson_and_requests_arrive_unchanged(  # type: ignore[no-untyped-def]
        edge: Edge, fake_orchestrator, tenant: Tenant) -> None:
    servicer, _ = fake_orchestrator
    run = f"{tenant.parent}/runs/r1"
    reply = request(edge.address, "GET", f"/v1/{run}/events?afterSequence=1",
                    headers={**tenant.headers(Role.VIEWER), "X-Custom": "kept"})
    assert reply.status == 200, reply
    lines = reply.body.decode().strip().split("\n")
    events = [json.loads(line) for line in lines]
    assert [e["sequence"] for e in events] == ["1", "2", "3"]  # int64 is a JSON string
    assert events[0]["type"] == "RUN_EVENT_TYPE_NODE_SUCCEEDED" and events[2]["node"] == "n3"
    assert events[1]["payload"] == {"n": 2} and events[0]["run"] == run
    assert servicer.requests[-1].after_sequence == 1
    seen = servicer.metadata[-1]
    assert seen["authorization"] == f"Bearer {tenant.tokens[Role.VIEWER]}"
    assert seen["x-custom"] == "kept" and seen.get("x-request-id")

    # The same stream over gRPC through the edge.
    with grpc.insecure_channel(edge.address) as channel:
        stream = orchestrator_pb2_grpc.OrchestratorServiceStub(channel).StreamRunEvents(
            orchestrator_pb2.StreamRunEventsRequest(name=run), metadata=tenant.md(Role.VIEWER))
        assert [e.sequence for e in stream] == [1, 2, 3]


def test_grpc_errors_become_json_with_details(edge: Edge, tenant: Tenant) -> None:
    reply = request(edge.address, "GET", f"/v1/{tenant.parent}/runs/missing",
                    headers=tenant.headers(Role.VIEWER))
    assert reply.status == 404
    body = reply.json()
    assert body["code"] == 5 and body["message"].endswith("not found")
    types = {d["@type"].rsplit(".", 1)[1]: d for d in body["details"]}
    assert types["ErrorInfo"]["reason"] == "RUN_NOT_FOUND"
    violation = types["BadRequest"]["fieldViolations"][0]
    assert (violation["field"], violation["description"]) == ("name", "no run")
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_every_public_service_is_routed_and_transcoded() -> None:
    services = envoy.descriptor_services(envoy.DESCRIPTOR)
    assert set(services) == set(envoy.SERVICE_CLUSTER)
    config = envoy.render(envoy.EdgeConfig(edge_port=1, admin_port=2, upstreams={
        n: ("127.0.0.1", 3) for n in ("registry", "orchestrator", "sandbox")}))
    for service, cluster in envoy.SERVICE_CLUSTER.items():
        assert f'"prefix": "/{service}/"}}, "route": {{"cluster": "{cluster}"' in config
        assert f'- "{service}"' in config
