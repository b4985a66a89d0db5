"""`python -m services.orchestrator`: durable runs and semantic memory."""

from __future__ import annotations

import gc

import grpc
from iceos.memory.v1 import memory_pb2, memory_pb2_grpc
from iceos.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc

from services.common.server import Runtime, ServiceSpec, main

from .api import OrchestratorServicer
from .components import Catalog
from .config import EngineConfig
from .engine.worker import Worker
from .memory.api import MemoryServicer
from .notify import Notifier
from .runs import Runs

SERVICE_NAMES = (
    orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name,
    memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name,
)

# The engine of this process, built at register time (the event loop is running then).
_engine: dict[int, Worker] = {}


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    config = EngineConfig.from_env()
    if config.test_tools:
        from . import testing_tools
        testing_tools.install()
    notifier = Notifier(runtime.db, runtime.redis, poll_s=config.poll_s)
    catalog = Catalog()
    worker = Worker(runtime.db, runtime.settings, config, notifier, catalog)
    runs = Runs(runtime.db, config, notifier, catalog, worker)
    worker.runs = runs
    _engine[id(runtime)] = worker
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(runtime.db), server)
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(
        OrchestratorServicer(runs), server)


async def run_worker(runtime: Runtime) -> None:
    # The engine allocates many short-lived objects per node: collect the young generation
    # less often, and keep what exists at start (modules, contracts) out of full collections.
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    await _engine[id(runtime)].run()


async def stop(runtime: Runtime) -> None:
    worker = _engine.pop(id(runtime), None)
    if worker is not None:
        await worker.shutdown()
        await worker.notifier.stop()


SPEC = ServiceSpec(name="orchestrator", service_names=SERVICE_NAMES, register=register,
                   background=(run_worker,), on_stop=stop, pool_max=20)

if __name__ == "__main__":
    main(SPEC)
