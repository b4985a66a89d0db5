"""`python -m services.orchestrator`: durable runs and semantic memory."""

from __future__ import annotations

import grpc
from iceos.memory.v1 import memory_pb2, memory_pb2_grpc
from iceos.orchestrator.v1 import orchestrator_pb2

from services.common.server import Runtime, ServiceSpec, main

from .memory.api import MemoryServicer

SERVICE_NAMES = (
    orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name,
    memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name,
)


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(runtime.db), server)


SPEC = ServiceSpec(name="orchestrator", service_names=SERVICE_NAMES, register=register)

if __name__ == "__main__":
    main(SPEC)
