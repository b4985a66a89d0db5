"""`python -m services.sandbox`: isolated execution of untrusted code."""

from __future__ import annotations

import grpc
from iceos.sandbox.v1 import sandbox_pb2

from services.common.server import Runtime, ServiceSpec, main

SERVICE_NAMES = (sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"].full_name,)


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    # The Execute servicer arrives with the sandbox issue (#6); until then the service answers
    # health and reflection only, and Execute is UNIMPLEMENTED.
    return None


SPEC = ServiceSpec(name="sandbox", service_names=SERVICE_NAMES, register=register)

if __name__ == "__main__":
    main(SPEC)
