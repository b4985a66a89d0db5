"""The README's first calls work as written: its shell block runs against a live stack (with
the stack's address, project and token substituted for the defaults of `make run`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from services.common.principal import Role
from services.common.settings import REPO_ROOT


def _first_calls_block() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## First calls", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readme_first_calls(stack, tenant, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token_file = tmp_path / "admin-token"
    token_file.write_text(tenant.tokens[Role.ADMIN] + "\n")
    script = (_first_calls_block()
              .replace("localhost:8080", stack.edge.address)
              .replace(".iceos/admin-token", str(token_file))
              .replace("projects/default", tenant.parent)
              .replace(".venv/bin/grpcurl", str(Path(sys.executable).parent / "grpcurl")))
    lines = [line for line in script.splitlines()]
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # /v1/principal, the memory written, the search that finds it, and the grpcurl principal.
    principal = json.loads(out[out.index("{"):out.index("}") + 1])
    assert principal["project"] == tenant.parent
    assert "the ACME invoice is due on Friday" in out
    assert '"score"' in out
    assert '"role": "ROLE_ADMIN"' in out  # grpcurl's pretty JSON
