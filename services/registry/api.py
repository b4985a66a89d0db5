"""RegistryService servicer: proto ⇄ domain, nothing else."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2
from iceos.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.db import Database
from services.common.embedding import DEFAULT_EMBEDDER, Embedder

from .blueprints import Blueprints
from .components import Components
from .convert import KIND_NAMES
from .search import Search

Context = grpc.aio.ServicerContext


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, db: Database, embedder: Embedder = DEFAULT_EMBEDDER) -> None:
        self.blueprints = Blueprints(db)
        self.components = Components(db, embedder)
        self.searcher = Search(db, embedder)

    # -- blueprints -------------------------------------------------------------------------

    async def CreateBlueprint(self, request: registry_pb2.CreateBlueprintRequest,
                              context: Context) -> object:
        return await self.blueprints.create(request.parent, request.blueprint_id,
                                            request.blueprint, request.request_id)

    async def GetBlueprint(self, request: registry_pb2.GetBlueprintRequest,
                           context: Context) -> object:
        return await self.blueprints.get(request.name)

    async def ListBlueprints(self, request: registry_pb2.ListBlueprintsRequest,
                             context: Context) -> registry_pb2.ListBlueprintsResponse:
        page = await self.blueprints.list(request.parent, request.page_size,
                                          request.page_token, request.filter)
        return registry_pb2.ListBlueprintsResponse(blueprints=page.items,
                                                   next_page_token=page.next_page_token)

    async def UpdateBlueprint(self, request: registry_pb2.UpdateBlueprintRequest,
                              context: Context) -> object:
        return await self.blueprints.update(request.blueprint, request.update_mask)

    async def DeleteBlueprint(self, request: registry_pb2.DeleteBlueprintRequest,
                              context: Context) -> empty_pb2.Empty:
        await self.blueprints.delete(request.name, request.etag)
        return empty_pb2.Empty()

    async def ListBlueprintVersions(self, request: registry_pb2.ListBlueprintVersionsRequest,
                                    context: Context
                                    ) -> registry_pb2.ListBlueprintVersionsResponse:
        page = await self.blueprints.list_versions(request.parent, request.page_size,
                                                   request.page_token)
        return registry_pb2.ListBlueprintVersionsResponse(
            versions=page.items, next_page_token=page.next_page_token)

    async def GetBlueprintVersion(self, request: registry_pb2.GetBlueprintVersionRequest,
                                  context: Context) -> object:
        return await self.blueprints.get_version(request.name)

    async def ValidateBlueprint(self, request: registry_pb2.ValidateBlueprintRequest,
                                context: Context) -> registry_pb2.ValidateBlueprintResponse:
        violations = await self.blueprints.validate(request.parent, request.blueprint,
                                                   request.source)
        return registry_pb2.ValidateBlueprintResponse(
            valid=not violations,
            violations=[registry_pb2.Violation(field=v.field, description=v.description,
                                               reason=v.reason) for v in violations])

    # -- components -------------------------------------------------------------------------

    async def CreateComponent(self, request: registry_pb2.CreateComponentRequest,
                              context: Context) -> object:
        return await self.components.create(request.parent, request.component_id,
                                            request.component, request.request_id)

    async def GetComponent(self, request: registry_pb2.GetComponentRequest,
                           context: Context) -> object:
        return await self.components.get(request.name)

    async def ListComponents(self, request: registry_pb2.ListComponentsRequest,
                             context: Context) -> registry_pb2.ListComponentsResponse:
        page = await self.components.list(request.parent, request.page_size,
                                          request.page_token, request.filter)
        return registry_pb2.ListComponentsResponse(components=page.items,
                                                   next_page_token=page.next_page_token)

    async def UpdateComponent(self, request: registry_pb2.UpdateComponentRequest,
                              context: Context) -> object:
        return await self.components.update(request.component, request.update_mask)

    async def DeleteComponent(self, request: registry_pb2.DeleteComponentRequest,
                              context: Context) -> empty_pb2.Empty:
        await self.components.delete(request.name, request.etag)
        return empty_pb2.Empty()

    async def ListComponentVersions(self, request: registry_pb2.ListComponentVersionsRequest,
                                    context: Context
                                    ) -> registry_pb2.ListComponentVersionsResponse:
        page = await self.components.list_versions(request.parent, request.page_size,
                                                   request.page_token)
        return registry_pb2.ListComponentVersionsResponse(
            versions=page.items, next_page_token=page.next_page_token)

    async def GetComponentVersion(self, request: registry_pb2.GetComponentVersionRequest,
                                  context: Context) -> object:
        return await self.components.get_version(request.name)

    async def SearchComponents(self, request: registry_pb2.SearchComponentsRequest,
                               context: Context) -> registry_pb2.SearchComponentsResponse:
        kinds = [KIND_NAMES[k] for k in request.kinds if k in KIND_NAMES]
        matches = await self.searcher.search(request.parent, request.query, request.page_size,
                                             kinds)
        return registry_pb2.SearchComponentsResponse(results=[
            registry_pb2.SearchResult(component=m.component, score=m.score) for m in matches])


def add_to_server(server: grpc.aio.Server, db: Database) -> None:
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(db), server)
