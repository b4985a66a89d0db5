"""The corpus of invalid blueprints (tests/registry_corpus/*.yaml): each file holds a blueprint
and the exact violations it must produce (`path REASON`). Files that load are validated by the
running registry (ValidateBlueprint, gRPC through the edge) in a project prepared from
_setup.yaml; shape mistakes are caught by the YAML loader with the same kind of paths. Every
example in examples/blueprints/ must validate cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from iceos.registry.v1 import registry_pb2

from services.common import errors
from services.common.blueprint.authoring import blueprint_from_data, load_blueprint
from services.common.principal import Role
from tests.support.registry import component, stub

CORPUS = Path(__file__).parent / "registry_corpus"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "blueprints"
CASES = sorted(p for p in CORPUS.glob("*.yaml") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def project(stack):  # type: ignore[no-untyped-def]
    """A tenant holding the components and blueprints the corpus refers to."""
    tenant = stack.tenant()
    setup = yaml.safe_load((CORPUS / "_setup.yaml").read_text())
    with stack.channel() as channel:
        s = stub(channel)
        for section in ("components", "blueprints", "components_after"):
            for ident, spec in setup[section].items():
                if section == "blueprints":
                    s.CreateBlueprint(registry_pb2.CreateBlueprintRequest(
                        parent=tenant.parent, blueprint_id=ident,
                        blueprint=blueprint_from_data(spec)), metadata=tenant.md())
                else:
                    s.CreateComponent(registry_pb2.CreateComponentRequest(
                        parent=tenant.parent, component_id=ident, component=component(spec)),
                        metadata=tenant.md())
    return tenant


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_invalid_blueprint(stack, project, path: Path) -> None:  # type: ignore[no-untyped-def]
    text = path.read_text().replace("$PROJECT", project.project_id)
    case = yaml.safe_load(text)
    expected = sorted(tuple(item.rsplit(" ", 1)) for item in case["expect"])
    assert expected, "a corpus case must expect at least one violation"
    try:
        spec = blueprint_from_data(case["blueprint"])
    except errors.InvalidArgument as exc:
        assert sorted((v.field, v.reason) for v in exc.violations) == expected
        assert all(v.description for v in exc.violations)
        return
    with stack.channel() as channel:
        result = stub(channel).ValidateBlueprint(registry_pb2.ValidateBlueprintRequest(
            parent=project.parent, blueprint=spec), metadata=project.md(Role.VIEWER))
    assert not result.valid
    assert sorted((v.field, v.reason) for v in result.violations) == expected, \
        "\n".join(f"{v.field} {v.reason}: {v.description}" for v in result.violations)
    assert all(len(v.description) > 10 for v in result.violations)


def test_every_example_validates_and_saves(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert len(examples) >= 9
    loaded = {p.stem: load_blueprint(p.read_bytes(), source=str(p)) for p in examples}
    # Blueprints that others call as workflows are saved first.
    order = sorted(loaded, key=lambda n: any(node.HasField("workflow")
                                             for node in loaded[n].nodes))
    with stack.channel() as channel:
        s = stub(channel)
        for name in order:
            result = s.ValidateBlueprint(registry_pb2.ValidateBlueprintRequest(
                parent=tenant.parent, blueprint=loaded[name]), metadata=tenant.md(Role.VIEWER))
            assert result.valid, (name, [(v.field, v.description) for v in result.violations])
            s.CreateBlueprint(registry_pb2.CreateBlueprintRequest(
                parent=tenant.parent, blueprint_id=name.replace("_", "-"),
                blueprint=loaded[name]), metadata=tenant.md())
