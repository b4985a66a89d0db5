"""`python -m services.sandbox`: isolated execution of untrusted code."""

from __future__ import annotations

import grpc
from iceos.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

from services.common.server import Runtime, ServiceSpec, main

from .api import SandboxServicer
from .executor import Sandbox

SERVICE_NAMES = (sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"].full_name,)

_sandboxes: list[Sandbox] = []


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    # The zygotes start now, while the service waits for its database, not on the first call.
    sandbox = Sandbox(runtime.settings)
    sandbox.start()
    _sandboxes.append(sandbox)
    sandbox_pb2_grpc.add_SandboxServiceServicer_to_server(SandboxServicer(sandbox), server)


async def stop(runtime: Runtime) -> None:
    while _sandboxes:
        await _sandboxes.pop().close()


SPEC = ServiceSpec(name="sandbox", service_names=SERVICE_NAMES, register=register, on_stop=stop)

if __name__ == "__main__":
    main(SPEC)
