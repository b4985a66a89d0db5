"""AuthService servicer: proto ⇄ domain, nothing else."""

from __future__ import annotations

import grpc
from iceos.auth.v1 import auth_pb2, auth_pb2_grpc

from services.common import principal as principals
from services.common.auth import Authenticator
from services.common.db import Database

from . import convert
from .api_tokens import ApiTokens
from .tenancy import Tenancy


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, db: Database, authenticator: Authenticator | None = None) -> None:
        self.tokens = ApiTokens(db, authenticator)
        self.tenancy = Tenancy(db)

    async def GetCurrentPrincipal(self, request: auth_pb2.GetCurrentPrincipalRequest,
                                  context: grpc.aio.ServicerContext) -> auth_pb2.Principal:
        return convert.principal(principals.current())

    async def CreateToken(self, request: auth_pb2.CreateTokenRequest,
                          context: grpc.aio.ServicerContext) -> auth_pb2.Token:
        row, secret = await self.tokens.mint(principals.current(), request.parent,
                                             convert.new_token(request.token),
                                             request.request_id)
        return convert.token(row, secret)

    async def ListTokens(self, request: auth_pb2.ListTokensRequest,
                         context: grpc.aio.ServicerContext) -> auth_pb2.ListTokensResponse:
        page = await self.tokens.list(request.parent, page_size=request.page_size,
                                      page_token=request.page_token,
                                      show_inactive=request.show_inactive)
        return auth_pb2.ListTokensResponse(tokens=[convert.token(r) for r in page.rows],
                                           next_page_token=page.next_page_token)

    async def GetToken(self, request: auth_pb2.GetTokenRequest,
                       context: grpc.aio.ServicerContext) -> auth_pb2.Token:
        return convert.token(await self.tokens.get(request.name))

    async def RevokeToken(self, request: auth_pb2.RevokeTokenRequest,
                          context: grpc.aio.ServicerContext) -> auth_pb2.Token:
        return convert.token(await self.tokens.revoke(principals.current(), request.name))

    async def CreateProject(self, request: auth_pb2.CreateProjectRequest,
                            context: grpc.aio.ServicerContext) -> auth_pb2.Project:
        return convert.project(await self.tenancy.create_project(
            principals.current(), request.project_id, request.project.display_name,
            request.request_id))

    async def GetProject(self, request: auth_pb2.GetProjectRequest,
                         context: grpc.aio.ServicerContext) -> auth_pb2.Project:
        return convert.project(await self.tenancy.project(request.name))

    async def ListProjects(self, request: auth_pb2.ListProjectsRequest,
                           context: grpc.aio.ServicerContext) -> auth_pb2.ListProjectsResponse:
        rows, next_token = await self.tenancy.projects(
            principals.current(), page_size=request.page_size, page_token=request.page_token)
        return auth_pb2.ListProjectsResponse(projects=[convert.project(r) for r in rows],
                                             next_page_token=next_token)

    async def GetOrganization(self, request: auth_pb2.GetOrganizationRequest,
                              context: grpc.aio.ServicerContext) -> auth_pb2.Organization:
        return convert.organization(await self.tenancy.organization(principals.current(),
                                                                    request.name))
