"""The README and the docs work exactly as written.

Every ```bash and ```python block of README.md and docs/*.md is either run here — in document
order, each document in one shell session (variables set by one block are seen by the next),
against the session's live stack — or listed in EXCLUDED with the reason. A block in neither
list fails the test, so a new example cannot go unchecked.

A user runs them from the repository root against `make run`, whose bootstrap created the
`default` organization and project and wrote `.iceos/admin-token` and `.iceos/stack.env`. Here
the same bootstrap command runs against the stack's database into a scratch ICEOS_HOME, and
exactly three substitutions point the text at it:

    localhost:8080  ->  the stack's edge address
    .iceos/         ->  the scratch ICEOS_HOME
    .venv/bin/      ->  the directory of the Python running the tests

Lines written `# → text` after a command are what it prints: they must appear in the block's
output, in order, with `…` standing for anything on that line. Each run block shows at least one.

The same checks against your own `make run` (it writes to the `default` project):
    python -m tests.test_readme [DOCUMENT ...]   # honours ICEOS_EDGE_PORT and ICEOS_HOME
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.settings import REPO_ROOT
from services.stack.runner import write_stack_env

# Documents whose examples run, in this order (later ones may rely on what earlier ones made:
# docs/security.md rotates the bootstrap token last).
DOCUMENTS = ("README.md", "docs/blueprints.md", "docs/runs.md", "docs/sandbox.md",
             "docs/security.md")

# (document, heading, index of the block under that heading) -> (text the block must contain,
# why it is not run here).
EXCLUDED: dict[tuple[str, str, int], tuple[str, str]] = {
    ("README.md", "Two commands", 0): (
        "make run", "`make run` is what the session `stack` fixture stands for (its supervisor "
        "is run for real by tests/test_local_stack.py), and `make test` is this test run"),
    ("README.md", "Deploying", 0): (
        "docker compose up", "needs Docker Compose and a Kubernetes cluster; "
        "tests/test_edge_deploy.py renders both files and validates the edge they start"),
    ("README.md", "Development", 0): (
        "make proto", "developer tooling: `make proto`/`proto-check` rewrite gen/ (CI runs "
        "proto-check itself), `.ci/run` runs this suite, `make bench` takes many minutes"),
    ("docs/benchmarks.md", "Benchmarks", 0): (
        "make bench-edge", "each benchmark runs for minutes and rewrites bench/results/"),
}

OUTPUT_MARK = "# → "
TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    document: str
    heading: str
    index: int
    language: str
    code: str

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.document, self.heading, self.index)

    def expected(self) -> list[str]:
        """What the block says it prints: the `# → ` lines, in order."""
        return [line.lstrip()[len(OUTPUT_MARK):].rstrip() for line in self.code.splitlines()
                if line.lstrip().startswith(OUTPUT_MARK)]


def blocks(document: str) -> list[Block]:
    """The bash and python blocks of a document, each with its nearest heading."""
    found: list[Block] = []
    heading, counts = "", {}  # type: ignore[var-annotated]
    lines = (REPO_ROOT / document).read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^```(\w*)\s*$", line)
        if line.startswith("#") and not fence:
            heading = line.lstrip("#").strip()
        elif fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            language = fence.group(1)
            if language in ("bash", "sh", "shell", "console", "python", "py"):
                index = counts.get(heading, 0)
                counts[heading] = index + 1
                found.append(Block(document, heading, index, language,
                                   "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return found


def all_documents() -> list[str]:
    return ["README.md"] + sorted(f"docs/{p.name}" for p in (REPO_ROOT / "docs").glob("*.md"))


def substitute(text: str, edge: str, home: Path, venv_bin: Path) -> str:
    return (text.replace("localhost:8080", edge)
            .replace(".iceos/", f"{home}/")
            .replace(".venv/bin/", f"{venv_bin}/"))


def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in expected.split("…")))


def check_output(block: Block, expected: list[str], output: str) -> None:
    """Every expected line appears in the output, in order."""
    position = 0
    for line in expected:
        found = _pattern(line).search(output, position)
        assert found, (f"{block.document} › {block.heading} [{block.index}]: the output does "
                       f"not show\n    {line}\nafter what was already matched. Output:\n{output}")
        position = found.end()


def _assigned_names(code: str) -> list[str]:
    return sorted(set(re.findall(r"^\s*([A-Z_][A-Z0-9_]*)=", code, re.M)))


def _user_env() -> dict[str, str]:
    """The caller's environment without the stack's own settings: a block that needs them must
    get them the way the docs say (from .iceos/stack.env)."""
    return {k: v for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith(("ICEOS_", "ICE_"))}


def run_block(block: Block, *, edge: str, home: Path, venv_bin: Path, state: Path,
              python: str = sys.executable) -> str:
    """Run one block as a user would (from the repository root); its stdout. Shell variables
    assigned in a bash block are saved to `state` for the document's next blocks."""
    code = substitute(block.code, edge, home, venv_bin)
    if block.language in ("python", "py"):
        args = [python, "-c", code]
    else:
        names = _assigned_names(block.code)
        save = "".join(f"declare -p {n} >> {state}\n" for n in names)
        script = f"[ -f {state} ] && source {state}\n{code}\n{save}"
        args = ["bash", "-euo", "pipefail", "-c", script]
    done = subprocess.run(args, cwd=REPO_ROOT, env=_user_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, (f"{block.document} › {block.heading} [{block.index}] exited "
                                  f"{done.returncode}\n--- stderr\n{done.stderr}\n--- stdout\n"
                                  f"{done.stdout}\n--- script\n{code}")
    return done.stdout


def run_document(document: str, *, edge: str, home: Path, venv_bin: Path, state: Path) -> None:
    for block in blocks(document):
        if block.key in EXCLUDED:
            continue
        output = run_block(block, edge=edge, home=home, venv_bin=venv_bin, state=state)
        check_output(block, block.expected(), output)


# -- the tests -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def readme_home(stack, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """What `make run` leaves in $ICEOS_HOME for the docs: the bootstrap's admin token (from the
    real bootstrap command, on the stack's database) and stack.env."""
    home = tmp_path_factory.mktemp("iceos-home")
    env = dict(_user_env(), DATABASE_URL=stack.database_url, ICEOS_HOME=str(home))
    done = subprocess.run([sys.executable, "-m", "services.registry", "bootstrap"], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"bootstrap of the test stack's database: {done.stderr}"
    write_stack_env(home, stack.database_url, stack.redis_url, stack.edge.url)
    return home


@pytest.mark.parametrize("document", DOCUMENTS)
def test_document_examples_work_as_written(document: str, stack, readme_home: Path,  # type: ignore[no-untyped-def]
                                           tmp_path: Path) -> None:
    run_document(document, edge=stack.edge.address, home=readme_home,
                 venv_bin=Path(sys.executable).parent, state=tmp_path / "shell-state")


def test_every_example_is_run_or_excluded_with_a_reason() -> None:
    seen: set[tuple[str, str, int]] = set()
    unlisted = []
    for document in all_documents():
        for block in blocks(document):
            seen.add(block.key)
            if block.key in EXCLUDED:
                marker, reason = EXCLUDED[block.key]
                assert marker in block.code, f"{block.key}: the excluded block changed"
                assert reason
            elif document not in DOCUMENTS:
                unlisted.append(block.key)
            else:
                assert block.expected(), (f"{block.key}: show what the example prints with "
                                          f"`{OUTPUT_MARK}…` lines")
    assert not unlisted, f"examples neither run nor excluded: {unlisted}"
    stale = set(EXCLUDED) - seen
    assert not stale, f"EXCLUDED names blocks that no longer exist: {stale}"
    # The documents run here have examples (a renamed file would silently check nothing).
    for document in DOCUMENTS:
        assert any(b.key not in EXCLUDED for b in blocks(document)), document


def test_blueprint_examples_in_the_docs_are_the_example_files() -> None:
    text = (REPO_ROOT / "docs" / "blueprints.md").read_text()
    shown = [b.strip() for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    files = {p.name: p.read_text().strip()
             for p in (REPO_ROOT / "examples" / "blueprints").glob("*.yaml")}
    assert sorted(shown) == sorted(files.values()), (
        "docs/blueprints.md must show examples/blueprints/*.yaml exactly, each once; differs: "
        f"{sorted(n for n, t in files.items() if t not in shown)}")


# -- the Configuration table -----------------------------------------------------------------------

_VARIABLE = re.compile(r"^(ICEOS|ICE)_[A-Z0-9_]+$")
# Named in code but not configuration the code reads.
NOT_SETTINGS = {"ICEOS_IDEMPOTENCY_KEY": "set by the sandbox for user code, never read"}


def variables_in_code() -> set[str]:
    """ICEOS_*/ICE_* names the code uses, as names or patterns (`ICEOS_*_PORT` for
    f"ICEOS_{name.upper()}_PORT")."""
    found: set[str] = set()
    files = [*(REPO_ROOT / "services").rglob("*.py"), *(REPO_ROOT / "clients").rglob("*.py"),
             REPO_ROOT / "tests" / "conftest.py"]
    for path in files:
        tree = ast.parse(path.read_text())
        # The literal parts of f-strings are judged with their f-string, not alone.
        parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    id(node) not in parts and _VARIABLE.match(node.value):
                found.add(node.value)
            elif isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "*"
                               for v in node.values)
                if "*" in text and _VARIABLE.match(text.replace("*", "X")) and \
                        text.startswith(("ICEOS_", "ICE_")):
                    found.add(text)
    return found - set(NOT_SETTINGS)


def variables_in_readme() -> set[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    # `ICEOS_LLM_<PROVIDER>_BASE_URL` is the pattern ICEOS_LLM_*_BASE_URL.
    return {re.sub(r"<[A-Z]+>", "*", name)
            for name in re.findall(r"`((?:ICEOS|ICE)_[A-Z0-9_<>]+)`", section)}


def test_configuration_table_lists_exactly_what_the_code_reads() -> None:
    code, documented = variables_in_code(), variables_in_readme()

    def covered(name: str, names: set[str]) -> bool:
        return any(name == other or fnmatch.fnmatchcase(name, other) or
                   fnmatch.fnmatchcase(other, name) for other in names)

    missing = sorted(n for n in code if not covered(n, documented))
    assert not missing, f"read by the code, missing from the README's Configuration: {missing}"
    stale = sorted(n for n in documented if not covered(n, code))
    assert not stale, f"in the README's Configuration, read by no code: {stale}"


if __name__ == "__main__":
    # Against your own `make run`: python -m tests.test_readme [DOCUMENT ...]
    import tempfile
    port = os.environ.get("ICEOS_EDGE_PORT", "8080")
    home = Path(os.environ.get("ICEOS_HOME") or REPO_ROOT / ".iceos").resolve()
    with tempfile.TemporaryDirectory() as scratch:
        for name in sys.argv[1:] or DOCUMENTS:
            run_document(name, edge=f"localhost:{port}", home=home,
                         venv_bin=REPO_ROOT / ".venv" / "bin",
                         state=Path(scratch) / name.replace("/", "_"))
            print(f"{name}: every example works as written")
