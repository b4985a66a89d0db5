"""The offline blueprint checker (`python -m services.common.blueprint.authoring`): status lines
for many files, or `--json FILE` printing the protobuf JSON the JSON API takes (`curl -d @-`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2

from services.common.blueprint.authoring import load_blueprint
from services.common.settings import REPO_ROOT

EXAMPLES = sorted((REPO_ROOT / "examples" / "blueprints").glob("*.yaml"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.common.blueprint.authoring", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_json_prints_the_protobuf_json_of_each_example() -> None:
    for path in EXAMPLES:
        result = _cli("--json", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        printed = json.loads(result.stdout)
        # Protobuf JSON names (camelCase), parsed strictly back to the same blueprint.
        same = json_format.ParseDict(printed, blueprint_pb2.Blueprint())
        assert same == load_blueprint(path.read_bytes()), path.name
    hello = json.loads(_cli("--json", "examples/blueprints/hello.yaml").stdout)
    assert hello["nodes"][1]["dependsOn"] == ["greet"]


def test_json_of_a_broken_file_prints_nothing_and_says_why(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("nodes:\n  - id: a\n    dependsOn: [b]\n"
                      "    llm: {model: deterministic, prompt: hi, promt: typo}\n")
    result = _cli("--json", str(broken))
    assert result.returncode == 1
    assert result.stdout == ""  # nothing half-made goes down the pipe
    assert "nodes[0].llm.promt" in result.stderr and "UNKNOWN_FIELD" in result.stderr
    # Loaded but invalid: the violation, still on stderr.
    broken.write_text("nodes:\n  - id: a\n    dependsOn: [b]\n"
                      "    llm: {model: deterministic, prompt: hi}\n")
    result = _cli("--json", str(broken))
    assert (result.returncode, result.stdout) == (1, "")
    assert "nodes[0].depends_on[0]" in result.stderr and "UNKNOWN_DEPENDENCY" in result.stderr


def test_usage_errors_and_missing_files_are_clear(tmp_path: Path) -> None:
    assert _cli().returncode == 2
    two = _cli("--json", str(EXAMPLES[0]), str(EXAMPLES[1]))
    assert two.returncode == 2 and "usage" in two.stderr and two.stdout == ""
    missing = _cli(str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1
    assert "nope.yaml: cannot read" in missing.stdout and "Traceback" not in missing.stderr


def test_status_lines_for_many_files() -> None:
    result = _cli(*map(str, EXAMPLES))
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(": ok (") == len(EXAMPLES)
