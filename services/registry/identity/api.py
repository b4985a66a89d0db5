"""AuthService servicer: proto ⇄ domain, nothing else."""

from __future__ import annotations

import grpc
from iceos.auth.v1 import auth_pb2, auth_pb2_grpc

from services.common import principal as principals


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    async def GetCurrentPrincipal(self, request: auth_pb2.GetCurrentPrincipalRequest,
                                  context: grpc.aio.ServicerContext) -> auth_pb2.Principal:
        who = principals.current()
        return auth_pb2.Principal(
            organization=f"organizations/{who.organization_id}",
            project=f"projects/{who.project_id}" if who.project_id else "",
            role=int(who.role), token=who.token_name, display_name=who.display_name)
