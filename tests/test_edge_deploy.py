"""One edge template for every deployment: docker-compose.yml and the Helm chart start the edge
with `python -m services.stack.envoy serve`, which renders envoy/envoy.yaml.tmpl from ICEOS_*
variables. Here both are parsed (and the chart rendered, without helm), the edge config each would
produce is rendered from their own variables and checked by `envoy --mode validate`, and what they
run exists in the repo. There is no Docker engine or Kubernetes here: this is as far as it goes."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.common.settings import REPO_ROOT
from services.stack import envoy
from tests.support.helm_lite import Renderer

CHART = REPO_ROOT / "helm" / "iceos"


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} / ${VAR:?message} / $$."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env:
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value).replace("$$", "$")


def _validate_edge(env: dict[str, str], tmp_path: Path) -> str:
    config = envoy.EdgeConfig.from_env(env)
    envoy.validate(config, tmp_path / "envoy.yaml")
    return (tmp_path / "envoy.yaml").read_text()


def _module_exists(command: list[str]) -> None:
    assert command[:2] == ["python", "-m"], command
    assert importlib.util.find_spec(command[2]) is not None, command


def test_compose_edge_renders_a_valid_envoy_config(tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "registry", "orchestrator", "sandbox", "edge",
            "bootstrap", "migrate"} <= set(services)
    secrets = {"ICEOS_SECRET_KEY": "k"}
    edge_env = {k: _interpolate(str(v), secrets) for k, v in
                services["edge"]["environment"].items()}
    rendered = _validate_edge(edge_env, tmp_path)
    assert "address: 0.0.0.0, port_value: 8080" in rendered
    assert "address: 127.0.0.1, port_value: 9901" in rendered  # admin: loopback only
    for name in ("registry", "orchestrator", "sandbox"):
        assert f"address: {name}, port_value:" in rendered
        _module_exists(services[name]["command"])
        env = {k: _interpolate(str(v), secrets) for k, v in services[name]["environment"].items()}
        assert env["DATABASE_URL"].startswith("postgresql://") and env["REDIS_URL"]
        assert env[f"ICEOS_{name.upper()}_PORT"] in edge_env[f"ICEOS_{name.upper()}_ADDRESS"]
    _module_exists(services["edge"]["command"])
    _module_exists(services["migrate"]["command"])
    assert "bootstrap" in services["bootstrap"]["command"][-1]
    # Without ICEOS_SECRET_KEY compose refuses to start rather than run without one.
    with pytest.raises(KeyError):
        _interpolate(services["registry"]["environment"]["ICEOS_SECRET_KEY"], {})
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for needed in ("COPY envoy", "COPY services", "COPY migrations", "COPY gen"):
        assert needed in dockerfile


def _render_chart(values: dict) -> list[dict]:  # type: ignore[type-arg]
    renderer = Renderer(CHART, values)
    docs = []
    for template in sorted((CHART / "templates").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(renderer.render(template.name)) if d]
    return docs


def test_helm_chart_renders_and_its_edge_config_is_valid(tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "iceos"
    docs = _render_chart(values)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted([("Deployment", f"ice-{n}") for n in
                            ("registry", "orchestrator", "sandbox", "edge")]
                           + [("Service", f"ice-{n}") for n in
                              ("registry", "orchestrator", "sandbox", "edge")]
                           + [("Secret", "ice-iceos"), ("Job", "ice-bootstrap")])
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for doc in docs:
        if doc["kind"] == "Service":  # every Service selects a Deployment's pods
            target = deployments[doc["metadata"]["name"]]
            labels = target["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"].items() <= labels.items()
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= \
            spec["template"]["metadata"]["labels"].items()
        container = spec["template"]["spec"]["containers"][0]
        _module_exists(container["command"])
        if name != "ice-edge":
            assert container["envFrom"][0]["secretRef"]["name"] == "ice-iceos"
    edge = deployments["ice-edge"]["spec"]["template"]["spec"]["containers"][0]
    edge_env = {e["name"]: str(e["value"]) for e in edge["env"]}
    rendered = _validate_edge(edge_env, tmp_path)
    assert "address: ice-registry, port_value: 50061" in rendered
    assert '{"exact": "http://localhost:3000"}' in rendered

    # Bring your own Secret: none is rendered, and everything uses yours.
    docs = _render_chart(dict(values, existingSecret="prod-iceos"))
    assert "Secret" not in [d["kind"] for d in docs]
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"][
        "name"] == "prod-iceos"


def test_serve_refuses_bad_settings_with_a_clear_message() -> None:
    env = {"ICEOS_CORS_ORIGINS": "*", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "services.stack.envoy", "render"], env=env,
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "ICEOS_CORS_ORIGINS" in result.stderr
    result = subprocess.run([sys.executable, "-m", "services.stack.envoy", "render"],
                            env={"PATH": "/usr/bin:/bin", "ICEOS_EDGE_RATE_LIMIT_RPS": "fast"},
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "ICEOS_EDGE_RATE_LIMIT_RPS" in result.stderr
