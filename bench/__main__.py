"""`python -m bench [name ...]`: run the named benchmarks (every bench/<name>/ package when none
is named)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(p.name for p in here.iterdir()
                           if (p / "__main__.py").exists() or (p / "bench.py").exists())
    for name in names:
        module = importlib.import_module(f"bench.{name}.bench")
        module.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
