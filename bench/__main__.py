"""`python -m bench [name …]`: run every bench/<name>/ package's main() (or the ones named)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    here = Path(__file__).parent
    names = argv or sorted(p.name for p in here.iterdir() if (p / "__init__.py").is_file())
    for name in names:
        importlib.import_module(f"bench.{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
