"""Make gen/python an importable package tree after `buf generate`.

Adds empty `__init__.py` files (regular packages keep mypy and editable installs simple) and a
`py.typed` marker so type checkers read the mypy-protobuf stubs.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "gen" / "python" / "iceos"


def main() -> int:
    for directory in [ROOT, *sorted(p for p in ROOT.rglob("*") if p.is_dir())]:
        if directory.name == "__pycache__":
            continue
        (directory / "__init__.py").touch()
    (ROOT / "py.typed").touch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
