from tests.support.runs import State, event_types, events, run_and_wait, stub, tool


def test_smoke(stack, tenant):
    with stack.channel("orchestrator") as ch:
        api = stub(ch)
        run = run_and_wait(api, tenant, {"nodes": [
            tool("a", "builtins/json_transform", {"expression": "input * 2", "input": 21}),
            tool("b", "builtins/template", {"template": "got {{ nodes.a.output.result }}"}, dependsOn=["a"]),
        ]})
        print(run)
        assert run.state == State.RUN_STATE_SUCCEEDED
        print(event_types(events(api, tenant, run.name)))
