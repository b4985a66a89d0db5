"""Capacity limits on an orchestrator of its own: a worker runs at most ICEOS_WORKER_MAX_RUNS runs
at once (the rest wait QUEUED, then run), and a project with ICEOS_PROJECT_MAX_ACTIVE_RUNS
unfinished runs gets RESOURCE_EXHAUSTED instead of another."""

from __future__ import annotations

import grpc
import pytest

from tests.support.processes import wait_for
from tests.support.runs import (State, get, orchestrator_env, orchestrators, start, stub, tool,
                                wait)
from tests.support.stack import create_tenant


def test_worker_and_project_limits(fresh_database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = orchestrator_env(fresh_database, None, tmp_path, ICEOS_WORKER_MAX_RUNS="1",
                           ICEOS_PROJECT_MAX_ACTIVE_RUNS="2", ICEOS_RUN_POLL_S="0.2")
    tenant = create_tenant(fresh_database)
    slow = {"nodes": [tool("nap", "builtins/test_record", {"sleep_s": 1.5, "record": False})]}
    with orchestrators(1, env, tmp_path) as (proc,):
        with grpc.insecure_channel(proc.address) as channel:
            api = stub(channel)
            first = start(api, tenant, spec=slow)
            second = start(api, tenant, spec=slow)
            wait_for(lambda: get(api, tenant, first.name).state == State.RUN_STATE_RUNNING, 30,
                     what="the first run to start")
            assert get(api, tenant, second.name).state == State.RUN_STATE_QUEUED
            with pytest.raises(grpc.RpcError) as info:
                start(api, tenant, spec=slow)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 unfinished runs" in info.value.details()
            done = [wait(api, tenant, r.name) for r in (first, second)]
            assert [d.state for d in done] == [State.RUN_STATE_SUCCEEDED] * 2
            assert done[1].start_time.ToDatetime() >= done[0].end_time.ToDatetime()
            third = wait(api, tenant, start(api, tenant, spec=slow).name)
            assert third.state == State.RUN_STATE_SUCCEEDED
