"""`make bench`: run every benchmark module bench/<name>/ (one with a __main__.py), one after the
other, each in its own process. `python -m bench edge` runs only the named ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    found = sorted(p.parent.name for p in HERE.glob("*/__main__.py"))
    unknown = sorted(set(names) - set(found))
    if unknown:
        print(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(found)})",
              file=sys.stderr)
        return 2
    failed = []
    for name in names or found:
        print(f"== bench.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=HERE.parent).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
