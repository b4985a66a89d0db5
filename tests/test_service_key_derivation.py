"""A deployment that sets only ICEOS_SECRET_KEY (docker-compose.yml, the Helm chart) still runs
code nodes: the services derive the service-token key from it when ICEOS_SERVICE_KEY is unset."""

from __future__ import annotations

from pathlib import Path

from services.common.settings import Settings
from tests.support.runs import State, py, run_and_wait, stub
from tests.support.stack import LiveStack, create_tenant


def test_service_key_comes_from_the_secret_key_when_not_set() -> None:
    derived = Settings.from_env({"ICEOS_SECRET_KEY": "s3cret"}).service_key
    assert derived and b"s3cret" not in derived
    # Every replica derives the same key; another secret gives another key.
    assert Settings.from_env({"ICEOS_SECRET_KEY": "s3cret"}).service_key == derived
    assert Settings.from_env({"ICEOS_SECRET_KEY": "other"}).service_key != derived
    # An explicit ICEOS_SERVICE_KEY wins; with neither there is none.
    assert Settings.from_env({"ICEOS_SECRET_KEY": "s3cret",
                              "ICEOS_SERVICE_KEY": "k"}).service_key == b"k"
    assert Settings.from_env({}).service_key is None


def test_code_node_runs_with_only_the_secret_key_set(fresh_database: str, redis_server,  # type: ignore[no-untyped-def]
                                                     tmp_path: Path) -> None:
    # As docker-compose.yml configures the services: ICEOS_SECRET_KEY, no ICEOS_SERVICE_KEY.
    live = LiveStack(database_url=fresh_database, redis_url=redis_server.url,
                     workdir=tmp_path / "stack",
                     extra_env={"ICEOS_SERVICE_KEY": "", "ICEOS_SECRET_KEY": "compose-secret"})
    live.start()
    try:
        tenant = create_tenant(fresh_database)
        with live.channel("orchestrator") as channel:
            run = run_and_wait(stub(channel), tenant, {"nodes": [{"id": "double", "code": {
                "source": "def main(inputs):\n    return inputs['x'] * 2\n",
                "argExpressions": {"x": "21"}}}]})
        assert run.state == State.RUN_STATE_SUCCEEDED, run.error
        assert py(run.output) == {"double": 42}
    finally:
        live.stop()
