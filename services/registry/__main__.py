"""`python -m services.registry` serves; `python -m services.registry bootstrap` creates the
default organization, project and admin token on an empty database."""

from __future__ import annotations

import sys

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from iceos.auth.v1 import auth_pb2, auth_pb2_grpc
from iceos.registry.v1 import registry_pb2

from services.common.server import Runtime, ServiceSpec, main

from . import api as registry_api
from .ext_authz import AuthorizationServicer
from .identity.api import AuthServicer

SERVICE_NAMES = (
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
)


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    registry_api.add_to_server(server, runtime.db)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(
        AuthServicer(runtime.db, runtime.authenticator), server)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationServicer(runtime.authenticator), server)


SPEC = ServiceSpec(name="registry", service_names=SERVICE_NAMES, register=register)

if __name__ == "__main__":
    if sys.argv[1:2] == ["bootstrap"]:
        from .identity.bootstrap import main as bootstrap_main
        raise SystemExit(bootstrap_main())
    main(SPEC)
