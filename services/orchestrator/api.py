"""OrchestratorService servicer: proto ⇄ domain (runs.py), nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
from google.protobuf import json_format
from iceos.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc, run_pb2

from services.common import errors, principal

from . import convert
from .runs import Runs, run_ids

MAX_WAIT = timedelta(minutes=10)
DEFAULT_WAIT = timedelta(seconds=30)


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, runs: Runs) -> None:
        self.runs = runs

    async def StartRun(self, request: orchestrator_pb2.StartRunRequest,
                       context: grpc.aio.ServicerContext) -> run_pb2.Run:
        source = request.WhichOneof("source")
        row = await self.runs.start(
            parent=request.parent, blueprint=request.blueprint if source == "blueprint" else "",
            version=request.version,
            inline=request.inline_blueprint if source == "inline_blueprint" else None,
            inputs=json_format.MessageToDict(request.inputs), request_id=request.request_id,
            timeout=request.timeout.ToTimedelta() if request.HasField("timeout") else None,
            creator=principal.current().token_name)
        return convert.run(row)

    async def GetRun(self, request: orchestrator_pb2.GetRunRequest,
                     context: grpc.aio.ServicerContext) -> run_pb2.Run:
        full = request.view == orchestrator_pb2.RUN_VIEW_FULL
        view = await self.runs.get(request.name, spec=full)
        return convert.run(view.row, view.nodes, view.attempts, full=full)

    async def ListRuns(self, request: orchestrator_pb2.ListRunsRequest,
                       context: grpc.aio.ServicerContext) -> orchestrator_pb2.ListRunsResponse:
        rows, token = await self.runs.list(parent=request.parent, page_size=request.page_size,
                                           page_token=request.page_token,
                                           filter_text=request.filter)
        return orchestrator_pb2.ListRunsResponse(runs=[convert.run(r) for r in rows],
                                                 next_page_token=token)

    async def CancelRun(self, request: orchestrator_pb2.CancelRunRequest,
                        context: grpc.aio.ServicerContext) -> run_pb2.Run:
        await self.runs.cancel(request.name, request.reason)
        view = await self.runs.get(request.name, spec=False)
        return convert.run(view.row, view.nodes, view.attempts)

    async def SignalRun(self, request: orchestrator_pb2.SignalRunRequest,
                        context: grpc.aio.ServicerContext) -> run_pb2.Run:
        await self.runs.signal(
            request.name, node=request.node, decision=int(request.decision),
            value=json_format.MessageToDict(request.input) if request.HasField("input")
            else None, has_value=request.HasField("input"), comment=request.comment,
            actor=principal.current().token_name)
        # The run as of the signal, with its node records (the answered node resumes a moment
        # later, when a worker picks the run up).
        view = await self.runs.get(request.name)
        return convert.run(view.row, view.nodes, view.attempts)

    async def StreamRunEvents(self, request: orchestrator_pb2.StreamRunEventsRequest,
                              context: grpc.aio.ServicerContext
                              ) -> AsyncIterator[run_pb2.RunEvent]:
        project, run_id = run_ids(request.name)
        async for row in self.runs.events(request.name, request.after_sequence,
                                          not request.no_follow):
            yield convert.event(project, run_id, row)

    async def WaitRun(self, request: orchestrator_pb2.WaitRunRequest,
                      context: grpc.aio.ServicerContext) -> run_pb2.Run:
        timeout = request.timeout.ToTimedelta() if request.HasField("timeout") else DEFAULT_WAIT
        if timeout < timedelta(0) or timeout > MAX_WAIT:
            raise errors.InvalidArgument.field("timeout", "must be between 0 and 10 minutes")
        view = await self.runs.wait_view(request.name, timeout or DEFAULT_WAIT)
        return convert.run(view.row, view.nodes, view.attempts)
